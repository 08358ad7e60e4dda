"""Property-based: malformed stores end in a StoreError or a correct read, never an unhandled exception.

Hypothesis writes small stores in the published layout with things wrong: gene ids duplicated, missing or
empty; X rows of the wrong length, null rows, NaN/inf/negative/huge values, X as the wrong type (scalars,
strings, integers), cell_type as floats or strings; parts and var.parquet truncated at a random byte or
replaced by garbage; empty splits; pickled .npy files. Reading goes through ``Store`` (metadata, split,
every row group, obs) and ``list_column_to_dense``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sctab.data.store import Store, StoreError, list_column_to_dense

pytestmark = pytest.mark.timeout(300)
CASES = {"store": 0, "dense": 0}

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -1.0, 1e30, float("nan"), float("inf"), -float("inf")]))


@st.composite
def stores(draw):
    n_genes = draw(st.integers(0, 4))
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    var_fault = draw(st.sampled_from(["none", "dup", "null", "empty", "no_column", "truncated", "garbage"]))
    if var_fault == "dup" and n_genes >= 2:
        ids[1] = ids[0]
    elif var_fault == "null" and n_genes:
        ids[0] = None
    elif var_fault == "empty" and n_genes:
        ids[-1] = " "
    n_rows = draw(st.integers(0, 6))
    rows = [draw(st.lists(values, min_size=n_genes, max_size=n_genes)) for _ in range(n_rows)]
    x_fault = draw(st.sampled_from(["none", "length", "null_row", "scalar", "string", "int", "double"]))
    if x_fault == "length" and rows:
        rows[draw(st.integers(0, len(rows) - 1))] = draw(st.lists(values, max_size=n_genes + 2))
    ct_fault = draw(st.sampled_from(["none", "float", "string"]))
    file_fault = draw(st.sampled_from(["none", "none", "truncate", "garbage", "empty_split", "no_part",
                                       "pickled_npy"]))
    cut = draw(st.floats(0.0, 0.99))
    return dict(n_genes=n_genes, ids=ids, var_fault=var_fault, rows=rows, x_fault=x_fault, ct_fault=ct_fault,
                file_fault=file_fault, cut=cut)


def _x_array(rows, fault):
    if fault == "scalar":
        return pa.array([r[0] if r else 0.0 for r in rows], type=pa.float32())
    if fault == "string":
        return pa.array([",".join(map(str, r)) for r in rows], type=pa.string())
    if fault == "int":
        return pa.array([[int(v) if np.isfinite(v) and abs(v) < 1e9 else 0 for v in r] for r in rows],
                        type=pa.list_(pa.int32()))
    if fault == "null_row" and rows:
        return pa.array([None] + rows[1:], type=pa.list_(pa.float32()))
    return pa.array(rows, type=pa.list_(pa.float64() if fault == "double" else pa.float32()))


def _write(root: Path, case: dict) -> None:
    root.mkdir()
    var = pd.DataFrame({"feature_id": case["ids"], "feature_name": [f"G{i}" for i in range(case["n_genes"])]})
    if case["var_fault"] == "no_column":
        var = var.drop(columns="feature_id")
    var.to_parquet(root / "var.parquet")
    if case["var_fault"] in ("truncated", "garbage"):
        data = (root / "var.parquet").read_bytes()
        (root / "var.parquet").write_bytes(data[: int(len(data) * case["cut"])] if case["var_fault"] == "truncated"
                                           else b"PAR1 not really parquet")
    (root / "categorical_lookup").mkdir()
    pd.DataFrame({"label": ["a", "b"]}).to_parquet(root / "categorical_lookup" / "cell_type.parquet")
    np.save(root / "class_weights.npy", np.ones(2))
    if case["file_fault"] == "pickled_npy":
        np.save(root / "class_weights.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    n = len(case["rows"])
    ct = {"none": pa.array(np.arange(n) % 2, type=pa.int64()), "float": pa.array(np.arange(n) * 0.5),
          "string": pa.array([str(i) for i in range(n)])}[case["ct_fault"]]
    tbl = pa.table({"X": _x_array(case["rows"], case["x_fault"]), "cell_type": ct})
    split = root / "train"
    split.mkdir()
    if case["file_fault"] == "no_part":
        return
    if case["file_fault"] == "empty_split":
        tbl = tbl.slice(0, 0)
    # with page CRCs, so corrupted data pages are detected rather than read as other numbers
    pq.write_table(tbl, split / "part.0.parquet", row_group_size=2, write_page_checksum=True)
    part = split / "part.0.parquet"
    if case["file_fault"] == "truncate":
        data = part.read_bytes()
        part.write_bytes(data[: int(len(data) * case["cut"])])
    elif case["file_fault"] == "garbage":
        data = bytearray(part.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 16] = b"\xff" * 16  # corrupt the middle: footer intact, pages broken
        part.write_bytes(bytes(data))


def _read_everything(root: Path):
    store = Store(root)
    store.class_weights()
    store.classes
    s = store.split("train")
    xs = [g["X"] for g in store.iter_row_groups("train")]
    obs = store.read_obs("train")
    return store, s, xs, obs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
# found by CI: a ragged row in a part that was then emptied is a well-formed (empty) store
@example(case=dict(n_genes=1, ids=["ENSG00000000000"], var_fault="none", rows=[[]], x_fault="length",
                   ct_fault="none", file_fault="empty_split", cut=0.0))
def test_malformed_stores_raise_store_error_or_read_correctly(case):
    CASES["store"] += 1
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "store"
        _write(root, case)
        try:
            store, split, xs, obs = _read_everything(root)
        except StoreError as e:
            assert str(e), "empty error message"
            # a refusal of a well-formed store would be a false alarm (corrupted bytes may be detected or not)
            assert not _well_formed(case) or case["file_fault"] == "garbage", (case, e)
            return
    # read without complaint: then the case was well-formed and the values are exactly those written
    assert _well_formed(case) or case["file_fault"] == "garbage", case
    rows = [] if case["file_fault"] == "empty_split" else case["rows"]  # an emptied part may have held ragged rows
    want = np.asarray(rows, dtype=np.float32).reshape(len(rows), case["n_genes"])
    got = np.concatenate(xs) if xs else np.empty((0, case["n_genes"]), np.float32)
    np.testing.assert_array_equal(got, want)  # NaN-aware; inf, negatives and huge values kept as written
    assert split.n_rows == len(want) == len(obs)


def _well_formed(case) -> bool:
    n = case["n_genes"]
    rows = [] if case["file_fault"] == "empty_split" else case["rows"]  # an empty part has no bad rows
    var_ok = case["var_fault"] == "none" or (case["var_fault"] == "dup" and n < 2) or (
        case["var_fault"] in ("null", "empty") and n == 0)
    x_ok = case["x_fault"] in ("none", "double") or (
        case["x_fault"] == "length" and all(len(r) == n for r in rows)) or (
        case["x_fault"] == "null_row" and (not rows or case["file_fault"] == "empty_split"))
    return (n > 0 and var_ok and x_ok and case["ct_fault"] == "none"
            and case["file_fault"] in ("none", "empty_split", "garbage"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.lists(st.one_of(st.none(), st.lists(values, max_size=5)), max_size=6).map(
        lambda rows: pa.chunked_array([pa.array(rows, type=pa.list_(pa.float32()))])),
    st.lists(st.text(max_size=3), max_size=4).map(lambda v: pa.chunked_array([pa.array(v, type=pa.string())])),
    st.lists(st.floats(width=32), max_size=4).map(lambda v: pa.chunked_array([pa.array(v, type=pa.float32())]))),
    st.integers(0, 5))
def test_list_column_to_dense_checks_every_row(col, n_genes):
    CASES["dense"] += 1
    try:
        out = list_column_to_dense(col, n_genes, "fuzz")
    except StoreError as e:
        assert "fuzz" in str(e)
        return
    rows = col.to_pylist()
    assert all(r is not None and len(r) == n_genes for r in rows)
    np.testing.assert_array_equal(out, np.asarray(rows, dtype=np.float32).reshape(len(rows), n_genes))


def test_report_number_of_cases():
    """Runs last in this module: the closing note quotes these counts."""
    print(f"\nhypothesis cases: store {CASES['store']}, list_column_to_dense {CASES['dense']}")
    assert CASES["store"] == 0 or CASES["store"] >= 100
