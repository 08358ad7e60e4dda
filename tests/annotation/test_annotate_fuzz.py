"""Property-based: `sctab annotate` on malformed .h5ad input exits 0 with a complete output or 2 with a clear
message, never a traceback, and never leaves a partial output file (a previous result survives untouched).

Hypothesis draws the matrix (dense or CSR; int, float, integral floats; NaN, inf, negative or fractional
counts; zero cells or zero genes), the gene ids (the model's, foreign ones, duplicates, empty strings) and
file damage (truncated at a random byte, garbage bytes, a non-.h5ad name).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sctab.cli import main as cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CASES = {"annotate": 0, "ok": 0, "refused": 0}


@st.composite
def inputs(draw, genes: list[str]):
    n_cells = draw(st.integers(0, 5))
    n_genes = draw(st.integers(0, min(6, len(genes))))
    ids = draw(st.lists(st.sampled_from(genes), min_size=n_genes, max_size=n_genes, unique=True))
    id_fault = draw(st.sampled_from(["none", "none", "dup", "foreign", "empty"]))
    if id_fault == "dup" and n_genes >= 2:
        ids[1] = ids[0]
    elif id_fault == "foreign":
        ids = [f"NOTAGENE{i}" for i in range(n_genes)]
    elif id_fault == "empty" and n_genes:
        ids[0] = ""
    kind = draw(st.sampled_from(["int", "integral_float", "float", "nan", "inf", "negative"]))
    x = np.asarray(draw(st.lists(st.integers(0, 50), min_size=n_cells * n_genes, max_size=n_cells * n_genes)),
                   dtype=np.float32).reshape(n_cells, n_genes)
    if x.size and kind in ("float", "nan", "inf", "negative"):
        i, j = draw(st.integers(0, n_cells - 1)), draw(st.integers(0, n_genes - 1))
        x[i, j] = {"float": 0.37, "nan": np.nan, "inf": np.inf, "negative": -2.0}[kind]
    if kind == "int":
        x = x.astype(np.int32)
    sparse = draw(st.booleans())
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "garbage", "suffix"]))
    cut = draw(st.floats(0.05, 0.95))
    return dict(x=x, ids=ids, sparse=sparse, damage=damage, cut=cut, kind=kind, id_fault=id_fault)


def _write(case: dict, d: Path) -> Path:
    adata = anndata.AnnData(sp.csr_matrix(case["x"]) if case["sparse"] else case["x"],
                            obs=pd.DataFrame(index=[f"c{i}" for i in range(case["x"].shape[0])]),
                            var=pd.DataFrame(index=pd.Index(case["ids"], dtype=str)))
    src = d / ("in.h5" if case["damage"] == "suffix" else "in.h5ad")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about non-unique var names: that is the point here
        adata.write_h5ad(src)
    if case["damage"] == "truncate":
        data = src.read_bytes()
        src.write_bytes(data[: int(len(data) * case["cut"])])
    elif case["damage"] == "garbage":
        data = bytearray(src.read_bytes())
        at = int(len(data) * case["cut"])
        data[at:at + 64] = b"\x00\xff" * 32
        src.write_bytes(bytes(data))
    return src


def test_annotate_cli_on_malformed_h5ad(bundle_dir, capsys):  # noqa: F811
    from sctab.annotation import load_annotator

    genes = list(load_annotator(bundle_dir).genes)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(inputs(genes))
    def run(case):
        CASES["annotate"] += 1
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            src = _write(case, d)
            out = d / "out.h5ad"
            out.write_text("previous result")
            try:
                rc = cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q"])
            except SystemExit as e:  # argparse-style exits count as exit codes too
                rc = e.code
            captured = capsys.readouterr()
            assert "Traceback" not in captured.err + captured.out
            leftovers = [p.name for p in d.iterdir() if p.name.startswith(".out")]
            assert not leftovers, leftovers
            if rc == 0:
                CASES["ok"] += 1
                result = anndata.read_h5ad(out)
                assert result.n_obs == case["x"].shape[0] and result.n_obs > 0
                assert result.obs["sctab_label"].notna().all()
            else:
                CASES["refused"] += 1
                assert rc == 2, (rc, captured.err)
                assert captured.err.startswith("sctab: error:"), captured.err
                assert out.read_text() == "previous result"

    run()
    print(f"\nhypothesis annotate cases: {CASES}")
    assert CASES["ok"] > 0 and CASES["refused"] > 0, CASES
