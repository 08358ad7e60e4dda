"""sctab.train."""
