"""sctab.census."""
