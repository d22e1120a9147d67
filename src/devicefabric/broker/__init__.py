"""The broker package (see DESIGN.md)."""
