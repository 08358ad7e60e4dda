"""Shared fixtures: one small embedded census and one Cell Ontology per test session."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from sctab.config import PROFILES_DIR
from tests.paths import PIPELINES

# The property-based tests replay the same examples on every run, so a red CI can be reproduced and a green
# one is not luck; `make fuzz` (--hypothesis-profile=explore) draws new examples each time.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("ci")

CL_VERSION = "v2026-03-26"


def pipeline_help(name: str) -> str:
    """The --help text of pipelines/<name>.py (run in-process; argparse exits 0 after printing it)."""
    import contextlib
    import importlib.util
    import io

    path = PIPELINES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pipeline_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as info:
        mod.main(["--help"])
    assert info.value.code == 0
    return buf.getvalue()


def small_params(census_uri: Path) -> dict:
    """The tiny profile, shrunk further so the census builds in seconds (same code path)."""
    params = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    params["census"]["uri"] = str(census_uri)
    params["synthetic"].update({"n_genes": 300, "donors_per_dataset": [3, 5], "cells_per_donor": [60, 140]})
    params["filters"].update({"min_cells_per_type": 60, "min_donors_per_type": 5})
    params["store"].update({"row_group_size": 64, "chunk_size": 512})
    params["augment"].update({"n_cells": 1900, "n_clusters": 5, "min_cluster_size": 50, "n_vectors": 500})
    params["train"].update({"cpus_per_worker": 1, "block_row_groups": 4, "eval_batch_size": 1024})
    small_sctab = {"n_d": 16, "n_a": 8, "n_shared": 1, "n_independent": 1, "virtual_batch_size": 64}
    for name, epochs in (("linear", 4), ("mlp", 4), ("sctab", 10)):
        params["models"][name].update({"batch_size": 64, "epochs": epochs, "patience": None})
    params["models"]["sctab"]["arch"].update(small_sctab)
    params["models"]["sctab"]["lr"] = 0.02  # the small net on 3k cells needs a push to start attending
    params["ensemble"]["seeds"] = [0, 1]
    params["pca"].update({"n_components": 32, "batch_size": 512})
    params["models"]["xgboost"].update({"n_estimators": 30, "max_depth": 4, "nthread": 1})
    params["models"]["celltypist"].update({"n_cells": 1500, "batch_number": 15, "batch_size": 100, "epochs": 3,
                                           "top_genes": 50, "n_jobs": 1})
    params["tune"].update({"num_samples": {"xgboost": 3, "celltypist": 2, "linear": 2, "mlp": 2},
                           "report_every": 5})
    params["experiments"].update({
        "epochs": 2, "seeds": [0], "max_concurrent": 2, "cpus_per_trial": 1,
        "model_size": {"model": "sctab", "widths": [[8, 4], [16, 8]]},
        "data_size": {"models": ["linear"], "schemes": ["cells", "donors"], "fractions": [50, 100]},
        "augmentation": {"model": "linear", "subset": "donors_50", "seeds": [0, 1], "r2_cells": 500},
        "organ": {"models": ["linear"], "tissue": "lung"}})
    return params


@pytest.fixture(scope="session")
def obo_file(tmp_path_factory) -> Path:
    from sctab.ontology import write_cl_obo

    return write_cl_obo(CL_VERSION, tmp_path_factory.mktemp("ontology") / "cl.obo")


@pytest.fixture(scope="session")
def ontology(obo_file):
    from sctab.ontology import CellOntology

    return CellOntology.from_obo(obo_file)


@pytest.fixture(scope="session")
def census_params(tmp_path_factory) -> dict:
    """Params of a small embedded census written once per session with the real SOMA writer."""
    from sctab.census.synthetic import build_synthetic_census

    params = small_params(tmp_path_factory.mktemp("census") / "soma")
    build_synthetic_census(params)
    return params


@pytest.fixture
def params(census_params) -> dict:
    return copy.deepcopy(census_params)


@pytest.fixture(scope="session")
def extraction(census_params, ontology):
    from sctab.census.extract import extract

    return extract(census_params, ontology)


@pytest.fixture(scope="session")
def split_result(extraction, census_params):
    from sctab.data.split import split_cells

    return split_cells(extraction.obs, census_params)


@pytest.fixture
def read_counts(census_params):
    """The raw-counts reader of the small census (what the store stage passes to the writer), open for a test."""
    from sctab.census.source import open_counts

    with open_counts(census_params) as reader:
        yield reader


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, census_params, extraction, split_result, ontology) -> Path:
    from sctab.census.source import open_counts
    from sctab.data.store_writer import write_store

    out = tmp_path_factory.mktemp("store") / "store"
    with open_counts(census_params) as read_counts:  # closed again: later tests fork loader workers
        write_store(census_params, extraction.obs, extraction.var, split_result.assignment, split_result.subsets,
                    ontology, out, read_counts)
    return out


@pytest.fixture(scope="session")
def augment_dir(store_dir, census_params, tmp_path_factory) -> Path:
    from sctab.data.augment import compute_augmentations, write_augmentations
    from sctab.data.store import Store

    vectors, report = compute_augmentations(Store(store_dir), census_params["augment"])
    return write_augmentations(vectors, report, tmp_path_factory.mktemp("aug") / "augment")


@pytest.fixture(scope="session")
def pca_dir(store_dir, census_params, tmp_path_factory) -> Path:
    from sctab.data.pca import write_pca
    from sctab.data.store import Store

    out = tmp_path_factory.mktemp("pca") / "pca"
    write_pca(Store(store_dir), out, progress=False, **census_params["pca"])
    return out


@pytest.fixture
def tracking(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test (MLFLOW_TRACKING_URI), run from tmp_path (artifacts go there)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def workdir(tracking, tmp_path, monkeypatch):
    """``tracking`` plus a local Ray only (no RAY_ADDRESS), shut down afterwards: (tmp_path, tracking URI)."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path, tracking
    ray.shutdown()


@pytest.fixture
def torch_one_thread():
    """Small tensors: one thread avoids OpenMP wake-up latency on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_uris_do_not_leak():
    """mlflow.set_tracking_uri / set_registry_uri also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into
    os.environ (for subprocesses). A test that registers in-process would otherwise hand its throw-away registry to
    every later test's subprocesses (`make serve` then looked for models in another test's database)."""
    saved = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ------------------------------------------- model folders, a bundle and the store's test cells as raw counts
@pytest.fixture(scope="module")
def models(store_dir, tmp_path_factory) -> Path:
    from tests.model_folders import write_model_folders

    return write_model_folders(tmp_path_factory.mktemp("annot-models"), store_dir)


@pytest.fixture(scope="module")
def bundle_dir(models, store_dir, ontology, tmp_path_factory) -> Path:
    from sctab.annotation import write_bundle
    from sctab.registry.register import store_class_ids

    return write_bundle(models / "sctab", tmp_path_factory.mktemp("bundle") / "bundle",
                        class_ids=store_class_ids(store_dir), ontology=ontology)


@pytest.fixture(scope="module")
def annotator(bundle_dir):
    from sctab.annotation import load_annotator

    return load_annotator(bundle_dir)


@pytest.fixture(scope="module")
def test_counts(store_dir, census_params):
    """Raw counts (census, all genes) of the store's test cells, in store order (an AnnData)."""
    import cellxgene_census
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from sctab.data.store import Store

    obs = Store(store_dir).read_obs("test", columns=("soma_joinid", "cell_type"))
    with cellxgene_census.open_soma(uri=census_params["census"]["uri"]) as census:
        adata = cellxgene_census.get_anndata(census, "Homo sapiens", X_name=census_params["census"]["x_layer"],
                                             obs_coords=obs["soma_joinid"].to_numpy())
    order = pd.Series(np.arange(adata.n_obs), index=adata.obs["soma_joinid"].to_numpy())
    adata = adata[order.loc[obs["soma_joinid"].to_numpy()].to_numpy()].copy()
    adata.var_names = adata.var["feature_id"].astype(str).to_numpy()
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git clone of the working tree with a small census profile (tests/dvc_project.py)."""
    from tests.dvc_project import clone_project

    return clone_project(tmp_path_factory.mktemp("proj") / "repo")
