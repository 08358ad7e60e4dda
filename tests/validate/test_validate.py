"""sctab.validate: valid data passes; each kind of corruption fails with a message naming it.

The base data: 20 donors (tech_samples) in two datasets, split 14/3/3 (exactly 70/15/15); B cells
and T cells in every donor, pericytes in 10 donors (40 cells); a 20-gene store written in the
published layout. Each test corrupts one thing on a copy and checks the failure message.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sctab.validate import ValidationError, expected_rows_from, split_row_stats, validate_all
from sctab.validate import stats as stats_mod
from tests.conftest import pipeline_help

N_GENES = 20
ROOT = "CL:0000003"
TYPES = {"B cell": "CL:0000236", "T cell": "CL:0000084", "pericyte": "CL:0000669"}
SPLITS = {"train": range(0, 14), "val": range(14, 17), "test": range(17, 20)}
PERICYTE_DONORS = {0, 1, 2, 3, 4, 5, 14, 15, 17, 18}
ALLOWED_ASSAYS = ["10x 3' v3", "10x 5' v2"]


class FakeOntology:
    """Input object with the two methods validate needs: every type a native, specific cell."""

    def __init__(self, n_ancestors: dict[str, int] | None = None, not_native: set[str] = frozenset()):
        self._n = {t: 9 for t in TYPES.values()} | {ROOT: 2} | (n_ancestors or {})
        self._not_native = set(not_native)

    def descendants(self, term_id: str) -> frozenset:
        if term_id != ROOT:
            return frozenset()
        return frozenset(t for t in TYPES.values() if t not in self._not_native)

    def n_ancestors(self, term_id: str) -> int:
        return self._n[term_id]


def make_params(**filters) -> dict:
    return {
        "filters": {
            "primary_only": True,
            "assays": ALLOWED_ASSAYS,
            "root_term": ROOT,
            "min_ancestors": 7,
            "min_cells_per_type": 30,
            "min_donors_per_type": 8,
        }
        | filters,
        "split": {"fractions": {"train": 0.7, "val": 0.15, "test": 0.15}},
        "store": {"target_sum": 10000},
        "validate": {"split_fraction_tolerance": 0.05, "row_sum_rtol": 0.01},
    }


def make_obs() -> pd.DataFrame:
    rows = []
    for d in range(20):
        ds, donor = f"ds{d % 2 + 1}", f"d{d}"
        per_type = {"B cell": 5, "T cell": 5, "pericyte": 4 if d in PERICYTE_DONORS else 0}
        for ct, n in per_type.items():
            for _ in range(n):
                rows.append(
                    {
                        "dataset_id": ds,
                        "donor_id": donor,
                        "tech_sample": f"{ds}_{donor}",
                        "assay": ALLOWED_ASSAYS[d % 2],
                        "cell_type": ct,
                        "cell_type_ontology_term_id": TYPES[ct],
                        "tissue": "lung",
                        "tissue_general": "lung",
                        "disease": "normal",
                        "development_stage": "adult",
                        "is_primary_data": True,
                    }
                )
    obs = pd.DataFrame(rows)
    obs.insert(0, "soma_joinid", np.arange(1000, 1000 + len(obs), dtype=np.int64))
    return obs


def make_assignment(obs: pd.DataFrame) -> pd.DataFrame:
    donor_no = obs["donor_id"].str[1:].astype(int)
    split = np.empty(len(obs), dtype=object)
    for name, donors in SPLITS.items():
        split[donor_no.isin(list(donors)).to_numpy()] = name
    return pd.DataFrame(
        {"soma_joinid": obs["soma_joinid"], "tech_sample": obs["tech_sample"], "cell_type": obs["cell_type"],
         "split": split}
    )


def write_part(path: Path, x: np.ndarray, codes: np.ndarray, row_group_size: int = 32) -> None:
    table = pa.table(
        {
            "X": pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32())),
            "cell_type": pa.array(codes, type=pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def read_part(path: Path) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(path)
    x = t.column("X").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1).copy()
    return x, t.column("cell_type").to_numpy()


def write_store(root: Path, assignment: pd.DataFrame, part_rows: int = 120) -> None:
    """The published layout: split/part.N.parquet, categorical_lookup/cell_type.parquet, var.parquet."""
    rng = np.random.default_rng(0)
    labels = sorted(TYPES)
    (root / "categorical_lookup").mkdir(parents=True)
    pq.write_table(pa.table({"label": labels}), root / "categorical_lookup" / "cell_type.parquet")
    pq.write_table(
        pa.table({"feature_id": [f"ENSG{i:011d}" for i in range(N_GENES)],
                  "feature_name": [f"g{i}" for i in range(N_GENES)]}),
        root / "var.parquet",
    )
    for split in SPLITS:
        sub = assignment[assignment["split"] == split]
        counts = rng.poisson(3.0, size=(len(sub), N_GENES)) + 1
        x = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 10_000)
        codes = sub["cell_type"].map({lab: i for i, lab in enumerate(labels)}).to_numpy(dtype=np.int64)
        (root / split).mkdir()
        for i, start in enumerate(range(0, len(sub), part_rows)):
            rows = slice(start, start + part_rows)
            write_part(root / split / f"part.{i}.parquet", x[rows], codes[rows])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    obs = make_obs()
    assignment = make_assignment(obs)
    write_store(root / "store", assignment)
    return {"obs": obs, "assignment": assignment, "store": root / "store"}


@pytest.fixture
def store_copy(base, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(base["store"], dst)
    return dst


def run(base, tmp_path, *, obs=None, assignment=None, store=None, params=None, ontology=None, expected_rows=None):
    return validate_all(
        base["obs"] if obs is None else obs,
        base["assignment"] if assignment is None else assignment,
        base["store"] if store is None else store,
        params or make_params(),
        ontology or FakeOntology(),
        tmp_path / "report",
        expected_rows=expected_rows,
    )


def fails_with(base, tmp_path, *expected_parts, **kw) -> ValidationError:
    """Run, expect ValidationError, and check every expected phrase is in one failure line."""
    with pytest.raises(ValidationError) as info:
        run(base, tmp_path, **kw)
    err = info.value
    msg = str(err)
    for part in expected_parts:
        assert part in msg, f"{part!r} not in:\n{msg}"
    # the report is still written, and says the same
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is False
    assert summary["failures"] == err.failures
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()
    return err


# ------------------------------------------------------------------------------------------ valid
def test_valid_data_passes_and_writes_reports(base, tmp_path):
    summary = run(base, tmp_path)
    assert summary["success"] is True, summary["failures"]
    assert summary["failures"] == []
    assert set(summary["suites"]) == {"extract", "filters", "split", "store"}
    for name, suite in summary["suites"].items():
        assert suite["success"] and suite["evaluated"] > 0 and suite["failed"] == 0, name
        for exp in suite["expectations"]:
            assert exp["success"] is True and exp["type"].startswith("expect_")
    store_types = {e["column"] for e in summary["suites"]["store"]["expectations"]}
    assert {"n_values", "n_nonfinite", "min", "max", "expm1_sum", "cell_type"} <= store_types
    report = tmp_path / "report"
    on_disk = json.loads((report / "summary.json").read_text())
    assert on_disk["success"] is True and on_disk["data_docs"] == "data_docs/index.html"
    index = report / "data_docs" / "index.html"
    assert index.is_file() and "store_test" in index.read_text()
    assert list((report / "data_docs" / "validations").rglob("*.html"))
    # atomic: no temporary directories left next to the report
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


# ---------------------------------------------------------------------------------------- extract
def test_non_primary_cell_fails(base, tmp_path):
    obs = base["obs"].copy()
    obs.loc[7, "is_primary_data"] = False
    fails_with(base, tmp_path, "extract: 1 cell is not primary data", "soma_joinid 1007 of donor 'ds1_d0'", obs=obs)


def test_disallowed_assay_fails(base, tmp_path):
    obs = base["obs"].copy()
    obs.loc[[3, 4], "assay"] = "Smart-seq2"
    fails_with(base, tmp_path, "extract: 2 cells have a disallowed assay 'Smart-seq2'", obs=obs)


def test_duplicate_soma_joinid_fails(base, tmp_path):
    obs = base["obs"].copy()
    obs.loc[1, "soma_joinid"] = obs.loc[0, "soma_joinid"]
    fails_with(base, tmp_path, "extract: 2 rows share a soma_joinid", "soma_joinid 1000", obs=obs)


# ---------------------------------------------------------------------------------------- filters
def test_rare_type_fails(base, tmp_path):
    err = fails_with(base, tmp_path, "filters: cell type 'pericyte' has 40 cells (< 50)",
                     params=make_params(min_cells_per_type=50))
    assert not any("'B cell'" in f for f in err.failures)  # 100 cells: fine


def test_type_in_too_few_donors_fails(base, tmp_path):
    err = fails_with(
        base, tmp_path, "filters: cell type 'pericyte' is seen in 10 donors (< 15)",
        params=make_params(min_donors_per_type=15)
    )
    assert len(err.failures) == 1


def test_non_native_type_fails(base, tmp_path):
    onto = FakeOntology(not_native={TYPES["T cell"]})
    fails_with(base, tmp_path, "filters: cell type 'T cell' (CL:0000084) is not CL:0000003 or one of its descendants",
               ontology=onto)


def test_broad_type_fails(base, tmp_path):
    onto = FakeOntology(n_ancestors={TYPES["B cell"]: 4})
    fails_with(base, tmp_path, "filters: cell type 'B cell' (CL:0000236) has 4 ancestors (< 7)", ontology=onto)


# ------------------------------------------------------------------------------------------ split
def test_leaked_donor_fails(base, tmp_path):
    a = base["assignment"].copy()
    first = a.index[a["tech_sample"] == "ds2_d19"][0]
    a.loc[first, "split"] = "train"
    err = fails_with(base, tmp_path, "split: donor 'ds2_d19' is in train and test", assignment=a,
                     expected_rows={"train": 164, "val": 38, "test": 38})
    assert sum("is in" in f for f in err.failures) == 1


def test_type_missing_from_test_fails(base, tmp_path):
    a = base["assignment"].copy()
    a.loc[(a["split"] == "test") & (a["cell_type"] == "pericyte"), "cell_type"] = "B cell"
    err = fails_with(base, tmp_path, "split: cell type 'pericyte' missing from test", assignment=a)
    assert not any("missing from train" in f or "missing from val" in f for f in err.failures)


def test_unassigned_cell_and_bad_fractions_fail(base, tmp_path):
    a = base["assignment"]
    a = a[~a["tech_sample"].isin(["ds1_d14", "ds2_d15"])]  # two val donors unassigned (28 cells)
    fails_with(
        base,
        tmp_path,
        "split: 28 cells are not assigned exactly once (soma_joinid",
        ": 0 times",
        "split: val holds 5.6% of donors (1); target 15% ± 5%",
        assignment=a,
        expected_rows={"train": 164, "val": 38, "test": 38},
    )


# ------------------------------------------------------------------------------------------ store
def test_nan_row_fails(base, tmp_path, store_copy):
    part = store_copy / "test" / "part.0.parquet"
    x, codes = read_part(part)
    x[17, 3] = np.nan
    write_part(part, x, codes)
    err = fails_with(base, tmp_path, "store/test: 1 row has non-finite values (row 17 of part.0.parquet)",
                     store=store_copy)
    assert len(err.failures) == 1  # the NaN does not also show up as a bad minimum or row sum


def test_negative_value_fails(base, tmp_path, store_copy):
    part = store_copy / "val" / "part.0.parquet"
    x, codes = read_part(part)
    x[3, 0] = -0.5
    write_part(part, x, codes)
    fails_with(base, tmp_path, "store/val: 1 row has negative values (row 3 of part.0.parquet: min -0.5)",
               store=store_copy)


def test_wrong_row_sum_fails(base, tmp_path, store_copy):
    part = store_copy / "train" / "part.1.parquet"
    x, codes = read_part(part)
    x[5] = np.log1p(np.expm1(x[5].astype(np.float64)) * 1.5)  # normalised to 15,000 instead of 10,000
    write_part(part, x, codes)
    fails_with(base, tmp_path, "store/train: 1 row does not sum to 10000 after expm1 (row 5 of part.1.parquet: 15,000)",
               store=store_copy)


def test_unnormalised_values_and_bad_codes_fail(base, tmp_path, store_copy):
    part = store_copy / "test" / "part.0.parquet"
    x, codes = read_part(part)
    x[0] = np.log1p(np.expm1(x[0].astype(np.float64)) * 1e4)  # raw-count scale
    codes[1] = 7
    write_part(part, x, codes)
    fails_with(
        base,
        tmp_path,
        "store/test: 1 row has values above log1p(10000) = 9.2104 (row 0 of part.0.parquet",
        "store/test: 1 row has a cell_type code outside the lookup (0..2) (row 1 of part.0.parquet: code 7)",
        store=store_copy,
    )


def test_row_count_mismatch_fails(base, tmp_path, store_copy):
    (store_copy / "train" / "part.1.parquet").unlink()
    fails_with(base, tmp_path, "store/train: has 120 rows, expected 164", store=store_copy)


def test_truncated_split_passes_with_expected_rows(base, tmp_path, store_copy):
    """A store truncated to whole row groups is fine when the caller says how many rows to expect."""
    (store_copy / "train" / "part.1.parquet").unlink()
    (store_copy / "store_report.json").write_text(json.dumps({"rows": {"train": 120, "val": 38, "test": 38}}))
    expected = expected_rows_from(store_copy, base["assignment"])
    assert expected == {"train": 120, "val": 38, "test": 38}
    assert run(base, tmp_path, store=store_copy, expected_rows=expected)["success"]


def test_wrong_x_length_fails(base, tmp_path, store_copy):
    part = store_copy / "val" / "part.0.parquet"
    x, codes = read_part(part)
    rows = [list(r) for r in x]
    rows[2] = rows[2][:-1]  # one gene short (its count still sums to ~target: only the length is wrong)
    pq.write_table(pa.table({"X": pa.array(rows, type=pa.list_(pa.float32())), "cell_type": codes}), part)
    fails_with(base, tmp_path, "store/val: 1 row has a length other than 20 genes (row 2 of part.0.parquet: 19 values)",
               store=store_copy)


# ------------------------------------------------------------------------------------ unit pieces
def test_row_stats_stream_in_small_batches(base, monkeypatch):
    """Batches smaller than a row group still number rows per part and give exact statistics."""
    monkeypatch.setattr(stats_mod, "VALUES_PER_BATCH", 7 * N_GENES)  # 7 rows a batch
    st = split_row_stats(base["store"] / "train", n_genes_hint=N_GENES)
    assert len(st.frame) == 164 and st.problems == []
    assert st.frame.groupby("part")["row"].agg(["min", "max"]).to_dict("index") == {
        "part.0.parquet": {"min": 0, "max": 119},
        "part.1.parquet": {"min": 0, "max": 43},
    }
    x, _ = read_part(base["store"] / "train" / "part.1.parquet")
    got = st.frame[st.frame["part"] == "part.1.parquet"]
    np.testing.assert_allclose(got["expm1_sum"], np.expm1(x.astype(np.float64)).sum(axis=1))
    np.testing.assert_allclose(got["max"], x.max(axis=1))
    assert math.isclose(float(got["expm1_sum"].mean()), 10_000, rel_tol=1e-4)


def test_missing_split_dir_is_reported(base, tmp_path, store_copy):
    shutil.rmtree(store_copy / "val")
    fails_with(base, tmp_path, "store/val: has 0 rows, expected 38", store=store_copy)


def test_missing_column_is_named(base, tmp_path):
    with pytest.raises(ValueError, match="obs .* lacks column\\(s\\) 'tech_sample'"):
        run(base, tmp_path, obs=base["obs"].drop(columns="tech_sample"))
    assert not (tmp_path / "report").exists()


def test_pipeline_help_describes_arguments():
    out = pipeline_help("validate")
    for arg in ("--params", "--obs", "--assignment", "--store", "--ontology", "--out"):
        assert arg in out
