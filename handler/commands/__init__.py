"""CLI sub-commands that need more than one call."""
