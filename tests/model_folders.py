"""Model folders and real sample files as the pipeline and users would write them, for the tests that need them.

The fixtures built on them (``models``, ``bundle_dir``, ``annotator``, ``test_counts``) are in conftest.py.
"""

from __future__ import annotations

import importlib.resources as resources
import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.data.store import Store

SMALL_SCTAB = {"n_d": 8, "n_a": 8, "n_shared": 1, "n_independent": 1, "virtual_batch_size": 64}


def neural_folder(store, out, name, seed, arch=None):
    """A random-weight neural model folder (``models.save``), logits spread so labels differ between cells."""
    import torch

    from sctab import models
    from sctab.models import FeatureSpace, TorchClassifier, build_model

    torch.manual_seed(seed)
    model = build_model(name, store.n_genes, store.n_classes, **(arch or {}))
    with torch.no_grad():  # spread the logits so labels differ between cells
        for p in model.parameters():
            p.mul_(3.0)
    clf = TorchClassifier(kind=name, module=model, space=FeatureSpace.of(store), config=dict(arch or {}))
    return models.save(out, clf, target_sum=10_000.0, meta={"run_id": f"run{seed}", "seed": seed}, history=[])


def write_model_folders(root: Path, store_dir, linear_seeds=(0,)) -> Path:
    """Random-weight model folders as the pipeline writes them: ``linear`` (then ``linear2``, ``linear3`` for
    more seeds) and a two-member ``sctab`` ensemble. Registration and annotation do not care how good they are."""
    store = Store(store_dir)
    for i, seed in enumerate(linear_seeds):
        neural_folder(store, root / ("linear" if i == 0 else f"linear{i + 1}"), "linear", seed)
    for s in (0, 1):
        neural_folder(store, root / "sctab" / f"seed_{s}", "sctab", s, SMALL_SCTAB)
    (root / "sctab" / "ensemble.json").write_text(json.dumps({"model": "sctab", "members": {"seed_0": "run0",
                                                                                            "seed_1": "run1"}}))
    return root


def write_pbmc_h5ad(path: Path) -> Path:
    """CellTypist's sample: raw UMI counts of 559 real PBMCs by gene symbol (a cells x genes CSV) as an h5ad."""
    csv = resources.files("celltypist") / "data" / "samples" / "sample_cell_by_gene.csv"
    frame = pd.read_csv(csv, index_col=0)
    adata = anndata.AnnData(sp.csr_matrix(frame.to_numpy(dtype=np.float32)), obs=pd.DataFrame(index=frame.index),
                            var=pd.DataFrame(index=frame.columns.astype(str)))
    adata.write_h5ad(path)
    return path
