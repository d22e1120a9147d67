"""The agent package (see DESIGN.md)."""
