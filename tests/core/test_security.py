"""Loading never runs code from a file unless the user said they trust it.

A malicious pickle (its ``__reduce__`` would create a marker file) is refused in every place sctab could
load a pickle: CellTypist model files, predictor folders, XGBoost model paths, torch checkpoints (weights-only
unpickler). The marker never appears. With the explicit trust flag the same kind of file loads (for the
CellTypist file the pipeline wrote itself: tests/models/test_celltypist_model.py).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml

from sctab.security import UntrustedPickleError
from tests.paths import REPO_ROOT as REPO

pytestmark = pytest.mark.timeout(120)


class _Exploit:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    return path


def test_the_exploit_really_runs_when_unpickled(tmp_path):
    """Control: the payload is live, so the refusals below are what keeps the marker away."""
    marker = tmp_path / "control"
    pickle.loads(_evil(tmp_path / "x.pkl", marker).read_bytes())
    assert marker.exists()


def test_celltypist_file_and_folder_are_refused(tmp_path):
    from sctab.models.celltypist_model import load_celltypist

    marker = tmp_path / "pwned"
    _evil(tmp_path / "m" / "model.pkl", marker)
    for target in (tmp_path / "m", tmp_path / "m" / "model.pkl"):
        with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
            load_celltypist(target)
    assert not marker.exists()


def test_predictor_folder_with_a_pickle_is_refused(tmp_path):
    from sctab.models import load

    marker = tmp_path / "pwned"
    folder = tmp_path / "celltypist"
    _evil(folder / "model.pkl", marker)
    (folder / "model.yaml").write_text(yaml.safe_dump({"model": "celltypist"}))
    for name in ("var.parquet", "cell_type.parquet"):
        (folder / name).write_bytes(b"")
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        load(folder)
    assert not marker.exists()


def test_xgboost_reads_only_ubj_or_json(tmp_path):
    from sctab.models.xgboost_model import load_xgboost

    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="UBJ"):
        load_xgboost(_evil(tmp_path / "booster.pkl", marker))
    assert not marker.exists()


def test_torch_checkpoints_use_the_weights_only_unpickler(tmp_path):
    import torch

    from sctab.models import load as load_model_folder

    marker = tmp_path / "pwned"
    folder = tmp_path / "linear"
    folder.mkdir()
    torch.save({"weight": _Exploit(marker)}, folder / "model.pt")  # torch.save pickles the object as is
    import pandas as pd

    pd.DataFrame({"feature_id": ["g1", "g2", "g3"]}).to_parquet(folder / "var.parquet")
    pd.DataFrame({"label": ["a", "b"]}).to_parquet(folder / "cell_type.parquet")
    (folder / "model.yaml").write_text(yaml.safe_dump({"model": "linear", "arch": {}, "n_genes": 3,
                                                       "n_classes": 2}))
    with pytest.raises(Exception) as info:
        load_model_folder(folder)
    assert "weights_only" in str(info.value) or "Unsupported global" in str(info.value) or isinstance(
        info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_published_checkpoint_reader_never_runs_pickled_code(tmp_path):
    import torch

    from sctab.models.published import read_published_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": _Exploit(marker)}, tmp_path / "last.ckpt")
    with pytest.raises(Exception, match="refusing to unpickle"):
        read_published_checkpoint(tmp_path / "last.ckpt", stub_globals=False)
    # stub_globals=True replaces the named globals (here os.system) by inert stand-ins: still nothing runs
    try:
        read_published_checkpoint(tmp_path / "last.ckpt", stub_globals=True)
    except Exception:  # noqa: BLE001 - a checkpoint without weights may be refused; running code is the point
        pass
    assert not marker.exists()


def test_no_torch_load_without_weights_only_in_the_sources():
    """An audit that stays true: every torch.load call in src/ and pipelines/ passes weights_only=True."""
    import re

    offenders = []
    for f in [*(REPO / "src").rglob("*.py"), *(REPO / "pipelines").rglob("*.py")]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{f.relative_to(REPO)}:{i}")
            if re.search(r"\b(pickle|joblib|cloudpickle)\.loads?\(|read_pickle\(|allow_pickle=True", line):
                offenders.append(f"{f.relative_to(REPO)}:{i}")
    assert not offenders, offenders
