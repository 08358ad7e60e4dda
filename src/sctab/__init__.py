"""scTab platform: cross-tissue cell type classification (Fischer et al.) as an MLOps project."""

__version__ = "0.1.0"
