"""sctab.tracking."""
