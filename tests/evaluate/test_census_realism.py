"""The statistics that put the embedded census beside real 10x data, on inputs whose answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from sctab.evaluate.census_realism import count_stats, markdown
from sctab.evaluate.structure import knn_purity
from tests.conftest import pipeline_help


def _clusters(n=300, sep=10.0, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["a", "b", "c"], n // 3)
    centres = {"a": 0.0, "b": sep, "c": -sep}
    emb = rng.normal(size=(n, 5)) + np.array([centres[x] for x in labels])[:, None]
    return emb, labels


def test_knn_purity_sees_structure_and_its_absence():
    emb, labels = _clusters()
    purity, chance = knn_purity(emb, labels)
    assert purity > 0.99 and chance == pytest.approx(1 / 3)
    shuffled = np.random.default_rng(1).permutation(labels)
    purity, _ = knn_purity(emb, shuffled)
    assert abs(purity - 1 / 3) < 0.08
    with pytest.raises(ValueError, match="labels for"):
        knn_purity(emb, labels[:-1])


def test_mean_variance_slope_tells_poisson_from_overdispersed_counts():
    rng = np.random.default_rng(0)
    n, g = 600, 400
    mu = np.exp(rng.uniform(np.log(0.05), np.log(20), g))
    labels = np.repeat(["x", "y"], n // 2)
    poisson = rng.poisson(mu, size=(n, g))
    nb = rng.negative_binomial(n=1.0 / 1.5, p=1.0 / (1.0 + 1.5 * mu), size=(n, g))   # dispersion 1.5
    sp_ = count_stats(sp.csr_matrix(poisson), labels, "poisson")
    snb = count_stats(sp.csr_matrix(nb), labels, "nb")
    assert abs(sp_.mv_slope - 1.0) < 0.1 and abs(sp_.overdispersion) < 0.1
    assert snb.mv_slope > 1.3 and snb.overdispersion == pytest.approx(1.5, rel=0.25)
    assert sp_.umis[0] <= sp_.umis[1] <= sp_.umis[2] and 0 < sp_.density <= 1
    table = markdown([sp_, snb])
    assert "| poisson |" in table and "| nb |" in table


def test_count_stats_refuses_normalised_values():
    x = sp.csr_matrix(np.log1p(np.arange(12, dtype=float).reshape(3, 4)))
    with pytest.raises(ValueError, match="raw counts"):
        count_stats(x, ["a", "b", "a"], "lognorm")


def test_census_realism_pipeline_help():
    out = pipeline_help("census_realism")
    assert "pyPLNmodels" in out and "--cache" in out


@pytest.mark.slow
def test_census_realism_on_the_tiny_profile(tmp_path):
    """The whole comparison: the embedded census of a small profile, real scMARK cells (fetched from the package
    index) and scanpy's PBMC; a table, JSON and a figure."""
    import subprocess
    import sys

    import yaml

    from sctab.config import REPO_ROOT

    params = yaml.safe_load((REPO_ROOT / "conf" / "profiles" / "tiny.yaml").read_text())
    params["synthetic"].update({"n_datasets": 6, "n_genes": 600})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cache = REPO_ROOT / "benchmarks" / ".cache" / "real-data"
    cmd = [sys.executable, str(REPO_ROOT / "pipelines" / "census_realism.py"),
           "--params", str(tmp_path / "params.yaml"),
           "--out", str(tmp_path / "out"), "--cache", str(cache)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "realism.json").read_text())
    assert [r["name"].split(" ")[0] for r in rows] == ["embedded", "embedded", "scMARK", "PBMC"]
    scmark = rows[2]
    assert scmark["n_cells"] == 2000 and scmark["n_types"] == 3 and scmark["mv_slope"] > 1.0
    assert all(r["purity"] > r["chance"] for r in rows)
    assert (tmp_path / "out" / "realism.png").stat().st_size > 10_000
