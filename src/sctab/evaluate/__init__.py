"""sctab.evaluate."""
