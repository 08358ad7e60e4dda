"""sctab.data."""
