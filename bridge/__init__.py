"""The bridge package (see DESIGN.md)."""
