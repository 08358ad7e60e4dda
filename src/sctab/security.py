"""Loading files without running code from them.

Formats that can hold only data are read that way (``torch.load(weights_only=True)``, XGBoost UBJ/JSON,
``np.load(allow_pickle=False)``, parquet, YAML's safe loader). A pickle can run arbitrary code the moment it is
read, so sctab refuses pickled files unless the caller says it trusts that file: ``trust_pickle=True`` in
Python, ``--trust-pickle`` on the command line. The one pickle the pipeline writes itself is CellTypist's own
model file (``models/celltypist/model.pkl``); the evaluate stage trusts it because the train stage of the
same DVC pipeline produced it in the same workspace.
"""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".pt.pkl")


class UntrustedPickleError(ValueError):
    """A pickled file was about to be loaded without the caller trusting it."""


def require_trusted_pickle(path: str | Path, what: str, trust_pickle: bool) -> None:
    """Raise :class:`UntrustedPickleError` unless ``trust_pickle``; ``what`` names the file for the user."""
    if trust_pickle:
        return
    raise UntrustedPickleError(
        f"{path} is {what}, a Python pickle: loading it can run arbitrary code. Load it only if you or a "
        f"source you trust wrote it, by passing trust_pickle=True (Python) or --trust-pickle (command line).")
