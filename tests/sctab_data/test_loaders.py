"""The mini-batch loaders: every row once per epoch, same batches across backends, bounded memory, loud errors."""

from __future__ import annotations

import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sctab.data.epoch_plan import epoch_plan
from sctab.data.loaders import Batch, LoaderError, make_loader
from sctab.data.merlin_loader import MerlinNotInstalled
from sctab.data.store import Store, StoreError

try:
    import merlin.dataloader  # noqa: F401

    HAVE_MERLIN = True
except ImportError:
    HAVE_MERLIN = False

needs_merlin = pytest.mark.skipif(not HAVE_MERLIN, reason="merlin-dataloader is an optional extra with its own "
                                  "venv: run `make test-merlin`")


def full_split(root: Path, split: str = "train", columns=("soma_joinid", "cell_type")) -> dict[str, np.ndarray]:
    """The split read directly with pyarrow, in file order: the ground truth the loaders are checked against."""
    tbl = pa.concat_tables([pq.read_table(f, columns=["X", *columns]) for f in Store(root).split(split).files])
    x = tbl.column("X").combine_chunks()
    out = {c: tbl.column(c).to_numpy() for c in columns}
    out["X"] = x.values.to_numpy().reshape(len(x), -1)
    return out


def collect(loader) -> dict[str, np.ndarray]:
    bs = list(loader)
    return {"x": np.concatenate([b.x.numpy() for b in bs]), "y": np.concatenate([b.y.numpy() for b in bs]),
            "id": np.concatenate([b.obs["soma_joinid"].numpy() for b in bs]), "sizes": [len(b) for b in bs]}


def ranks(root, world_size, epoch=0, **kw) -> list[dict[str, np.ndarray]]:
    out = []
    for r in range(world_size):
        ld = make_loader(root, "train", rank=r, world_size=world_size, columns=("soma_joinid",), **kw)
        ld.set_epoch(epoch)
        out.append(collect(ld))
    return out


@pytest.fixture(scope="module")
def truth(store_dir):
    t = full_split(store_dir)
    t["pos"] = pd.Series(np.arange(len(t["soma_joinid"])), index=t["soma_joinid"])
    return t


# ------------------------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_row_once_per_epoch_across_ranks(store_dir, truth, world_size):
    kw = dict(batch_size=50, shuffle=True, seed=7, block_row_groups=3)
    orders = []
    for epoch in (0, 1):
        parts = ranks(store_dir, world_size, epoch, **kw)
        ids = np.concatenate([p["id"] for p in parts])
        assert len(ids) == len(truth["soma_joinid"])
        assert np.array_equal(np.sort(ids), np.sort(truth["soma_joinid"]))
        for p in parts:  # the rows carry their own X and label
            pos = truth["pos"].loc[p["id"]].to_numpy()
            assert np.array_equal(p["x"], truth["X"][pos])
            assert np.array_equal(p["y"], truth["cell_type"][pos])
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1])
    again = np.concatenate([p["id"] for p in ranks(store_dir, world_size, 1, **kw)])
    assert np.array_equal(again, orders[1])


def test_unshuffled_is_file_order(store_dir, truth):
    got = collect(make_loader(store_dir, "train", batch_size=64 * 3 + 5, columns=("soma_joinid",)))
    assert np.array_equal(got["id"], truth["soma_joinid"])
    assert np.array_equal(got["x"], truth["X"])


def test_epoch_plan_is_pure_and_shards_by_row_group():
    sizes = [64] * 10 + [17]
    a = epoch_plan(sizes, None, seed=1, epoch=3, rank=1, world_size=3, block_row_groups=2, shuffle=True)
    b = epoch_plan(sizes, None, seed=1, epoch=3, rank=1, world_size=3, block_row_groups=2, shuffle=True)
    assert [x.groups for x in a] == [x.groups for x in b]
    assert all(np.array_equal(x.order(), y.order()) for x, y in zip(a, b))
    groups = [g for r in range(3) for blk in epoch_plan(sizes, None, 1, 3, r, 3, 2, True) for g in blk.groups]
    assert sorted(groups) == list(range(11))
    flat = epoch_plan(sizes, None, 1, 3, 0, 1, 4, False)
    assert [blk.groups for blk in flat] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10)]
    assert all(np.array_equal(blk.order(), np.arange(blk.n_rows)) for blk in flat)


def test_rows_subset_visits_exactly_the_subset(store_dir, truth):
    store = Store(store_dir)
    subset = store.train_subset("donors_30")
    assert 0 < len(subset) < len(truth["soma_joinid"])
    for world_size in (1, 2):
        parts = ranks(store_dir, world_size, batch_size=40, shuffle=True, rows=subset, block_row_groups=2)
        ids = np.concatenate([p["id"] for p in parts])
        assert np.array_equal(np.sort(ids), np.sort(truth["soma_joinid"][subset]))
    # row groups without a selected row are skipped (not read, not counted)
    rows = np.array([1, 5, 64 * 4 + 3])
    ld = make_loader(store_dir, "train", batch_size=2, rows=rows, columns=("soma_joinid",), block_row_groups=1)
    assert [blk.groups for blk in ld.plan()] == [(0,), (4,)]
    assert np.array_equal(collect(ld)["id"], truth["soma_joinid"][rows])
    assert len(ld) == 2 and ld.n_rows == 3


# ------------------------------------------------------------------------------------------- backends
def _settings_like_stream(store, shuffle: bool, world_size: int):
    """Loader settings the backend-equivalence tests walk: every rank, with and without a row subset."""
    subset = np.arange(0, Store(store).split("train").n_rows, 3)
    for rows in (None, subset):
        for rank in range(world_size):
            yield dict(batch_size=45, shuffle=shuffle, seed=3, rank=rank, world_size=world_size,
                       block_row_groups=3, rows=rows, columns=("soma_joinid", "donor_id"))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
def test_memory_backend_yields_the_same_batches_as_stream(store_dir, shuffle, world_size):
    for kw in _settings_like_stream(store_dir, shuffle, world_size):
        stream, memory = make_loader(store_dir, "train", **kw), make_loader(store_dir, "train", backend="memory", **kw)
        for epoch in (0, 1):
            stream.set_epoch(epoch)
            memory.set_epoch(epoch)
            a, b = list(stream), list(memory)
            assert len(a) == len(b) == len(stream) == len(memory)
            for p, q in zip(a, b):
                assert p.x.numpy().tobytes() == q.x.numpy().tobytes()
                assert torch.equal(p.y, q.y)
                assert p.obs.keys() == q.obs.keys() and all(torch.equal(p.obs[k], q.obs[k]) for k in p.obs)


@pytest.mark.parametrize("backend", ["stream", "memory"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_dtypes_shapes_len_and_drop_last(store_dir, backend, drop_last):
    store = Store(store_dir)
    n = store.split("train").n_rows
    ld = make_loader(store, "train", batch_size=100, backend=backend, shuffle=True, drop_last=drop_last,
                     columns=("donor_id", "is_primary_data"))
    batches = list(ld)
    assert len(ld) == len(batches) == (n // 100 if drop_last else -(-n // 100))
    assert ld.n_rows == n and ld.n_genes == store.n_genes == 300
    sizes = [len(b) for b in batches]
    assert all(s == 100 for s in sizes[:-1])
    assert sum(sizes) == (n // 100 * 100 if drop_last else n)
    for b in batches:
        assert isinstance(b, Batch)
        assert b.x.dtype == torch.float32 and b.x.shape == (len(b), 300) and b.x.is_contiguous()
        assert b.y.dtype == torch.int64 and b.y.shape == (len(b),)
        assert set(b.obs) == {"donor_id", "is_primary_data"}
        assert all(v.dtype == torch.int64 and v.shape == (len(b),) for v in b.obs.values())
        assert int(b.y.min()) >= 0 and int(b.y.max()) < store.n_classes


def _rows_and_peak_memory(ld) -> tuple[int, int]:
    """Rows of one pass over the loader and the peak of Python-traced memory during it."""
    tracemalloc.start()
    try:
        n = sum(len(b) for b in ld)
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stream_memory_stays_bounded(store_dir):
    split = Store(store_dir).split("train")
    max_rg = max(r for _, _, r in split.row_groups)
    x_bytes = split.n_rows * 300 * 4
    assert len(split.row_groups) >= 10 * 2  # the store is much bigger than one block
    ld = make_loader(store_dir, "train", batch_size=32, shuffle=True, block_row_groups=2)
    list(ld)  # warm up (imports, caches) before measuring
    n, peak = _rows_and_peak_memory(ld)
    assert n == split.n_rows
    assert ld.max_rows_buffered <= 2 * max_rg + 32
    assert peak < x_bytes / 5, (peak, x_bytes)


# ------------------------------------------------------------------------------------------- errors
def test_argument_errors(store_dir):
    with pytest.raises(LoaderError, match="known: stream, memory, merlin"):
        make_loader(store_dir, "train", batch_size=8, backend="dali")
    with pytest.raises(LoaderError, match="batch_size"):
        make_loader(store_dir, "train", batch_size=0)
    for rank, ws in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(LoaderError, match="rank"):
            make_loader(store_dir, "train", batch_size=8, rank=rank, world_size=ws)
    n = Store(store_dir).split("train").n_rows
    for rows in (np.array([0, n]), np.array([-1, 3])):
        with pytest.raises(LoaderError, match="outside"):
            make_loader(store_dir, "train", batch_size=8, rows=rows)
    with pytest.raises(LoaderError, match="duplicate"):
        make_loader(store_dir, "train", batch_size=8, rows=np.array([1, 1]))
    with pytest.raises(LoaderError, match="not in"):
        make_loader(store_dir, "train", batch_size=8, columns=("no_such_column",))


@pytest.mark.parametrize("backend", ["stream", "memory"])
def test_corrupt_part_names_the_file(store_dir, tmp_path, backend):
    root = tmp_path / "store"
    shutil.copytree(store_dir, root)
    part = root / "train" / "part.1.parquet"
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])  # footer gone: fails when the split is opened
    with pytest.raises(StoreError, match="part.1.parquet"):
        make_loader(root, "train", batch_size=8, backend=backend)
    part.write_bytes(good)
    ld = make_loader(root, "train", batch_size=8, backend=backend)
    part.write_bytes(good[: len(good) // 2])  # broken after the loader was made: fails when read
    with pytest.raises(StoreError, match="part.1.parquet"):
        list(ld)


@pytest.mark.parametrize("backend", ["stream", "memory"])
def test_out_of_range_cell_type_names_file_and_row_group(store_dir, tmp_path, backend):
    root = tmp_path / "store"
    shutil.copytree(store_dir, root)
    part = root / "train" / "part.0.parquet"
    tbl = pq.read_table(part)
    codes = tbl.column("cell_type").to_numpy().copy()
    codes[64 + 5] = Store(root).n_classes  # row 5 of row group 1
    tbl = tbl.set_column(tbl.schema.get_field_index("cell_type"), "cell_type", pa.array(codes))
    pq.write_table(tbl, part, row_group_size=64)
    with pytest.raises(LoaderError, match=r"part.0.parquet row group 1: cell_type code .* at row 5"):
        list(make_loader(root, "train", batch_size=8, backend=backend))


# ------------------------------------------------------------------------------------------- merlin
def write_toy_store(root: Path, n_rows=(300, 200, 77), n_genes=40, n_classes=5, row_group_size=64) -> Path:
    """A store in the published layout written with pyarrow only: the merlin venv has no census stack."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "categorical_lookup").mkdir()
    pd.DataFrame({"feature_id": [f"g{i}" for i in range(n_genes)],
                  "feature_name": [f"G{i}" for i in range(n_genes)]}).to_parquet(root / "var.parquet")
    labels = pd.DataFrame({"label": [f"t{i}" for i in range(n_classes)]})
    labels.to_parquet(root / "categorical_lookup/cell_type.parquet")
    start = 0
    for i, n in enumerate(n_rows):
        x = rng.random((n, n_genes), dtype=np.float32)
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * n_genes, n_genes, dtype=np.int32)),
                                       pa.array(x.reshape(-1)))
        tbl = pa.table({"X": col, "cell_type": rng.integers(0, n_classes, n),
                        "soma_joinid": np.arange(start, start + n, dtype=np.int64)})
        pq.write_table(tbl, root / "train" / f"part.{i}.parquet", row_group_size=row_group_size)
        start += n
    return root


@pytest.mark.skipif(HAVE_MERLIN, reason="merlin-dataloader is installed here")
def test_merlin_backend_without_merlin_says_how_to_install(tmp_path):
    root = write_toy_store(tmp_path / "toy")
    with pytest.raises(MerlinNotInstalled, match="make merlin-env") as e:
        make_loader(root, "train", batch_size=8, backend="merlin")
    assert isinstance(e.value, ImportError) and isinstance(e.value, LoaderError)


@needs_merlin
def test_merlin_backend_matches_stream(tmp_path):
    root = write_toy_store(tmp_path / "toy")
    kw = dict(batch_size=50, columns=("soma_joinid",))
    ref, got = list(make_loader(root, "train", **kw)), list(make_loader(root, "train", backend="merlin", **kw))
    assert len(got) == len(ref)
    for p, q in zip(ref, got):
        assert q.x.dtype == torch.float32 and q.y.dtype == torch.int64 and q.x.shape == p.x.shape
        assert torch.equal(p.x, q.x) and torch.equal(p.y, q.y)
        assert torch.equal(p.obs["soma_joinid"], q.obs["soma_joinid"])
    ids = {}
    for epoch in (0, 1):
        ld = make_loader(root, "train", backend="merlin", shuffle=True, seed=1, **kw)
        ld.set_epoch(epoch)
        ids[epoch] = torch.cat([b.obs["soma_joinid"] for b in ld]).numpy()
        assert np.array_equal(np.sort(ids[epoch]), np.arange(577))
    assert not np.array_equal(ids[0], ids[1])


@needs_merlin
def test_merlin_epoch_abandoned_early_stops_its_thread(tmp_path):
    """Reading a few batches and leaving (as the bench does) stops merlin's loading thread: a process that
    kept it running died at exit with "terminate called without an active exception"."""
    root = write_toy_store(tmp_path / "toy")
    script = (
        "import sys, threading\n"
        "from sctab.data.loaders import make_loader\n"
        f"ld = make_loader({str(root)!r}, 'train', batch_size=50, backend='merlin', shuffle=True, seed=0)\n"
        "before = threading.active_count()\n"
        "for i, b in enumerate(ld):\n"
        "    if i == 1:\n"
        "        break\n"
        "del b\n"
        "print('threads', before, threading.active_count())\n"
    )
    import subprocess

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, before, after = r.stdout.split()[-3:]
    assert int(after) <= int(before)


# ------------------------------------------------------------------------------------------- sparse layout
@pytest.fixture(scope="module")
def sparse_store(store_dir, tmp_path_factory):
    """A copy of the tiny store with the sparse layout written beside the dense parts."""
    from sctab.data.store_writer import write_sparse_layout

    root = tmp_path_factory.mktemp("sparse") / "store"
    shutil.copytree(store_dir, root)
    stats = write_sparse_layout(root)
    assert 0 < stats["density"] < 1 and stats["cells"] == sum(Store(root).split(s).n_rows
                                                               for s in ("train", "val", "test"))
    return root


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
def test_sparse_backend_yields_the_same_batches_as_stream(sparse_store, shuffle, world_size):
    for kw in _settings_like_stream(sparse_store, shuffle, world_size):
        stream = make_loader(sparse_store, "train", **kw)
        sparse = make_loader(sparse_store, "train", backend="sparse", **kw)
        csr = make_loader(sparse_store, "train", backend="sparse", x_format="csr", **kw)
        for epoch in (0, 1):
            for ld in (stream, sparse, csr):
                ld.set_epoch(epoch)
            a, b, c = list(stream), list(sparse), list(csr)
            assert len(a) == len(b) == len(c) == len(stream) == len(sparse) > 0
            for p, q, r in zip(a, b, c):
                assert q.x.layout == torch.strided and q.x.is_contiguous()
                assert p.x.numpy().tobytes() == q.x.numpy().tobytes()
                assert r.x.layout == torch.sparse_csr and r.x.shape == p.x.shape
                assert r.x.to_dense().numpy().tobytes() == p.x.numpy().tobytes()
                assert torch.equal(p.y, q.y) and torch.equal(p.y, r.y)
                assert all(torch.equal(p.obs[k], q.obs[k]) and torch.equal(p.obs[k], r.obs[k]) for k in p.obs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority: Linux")
def test_read_ahead_threads_run_at_lower_priority(sparse_store):
    """The read-ahead threads yield the cores to the training step's threads; the caller's priority stays."""
    import os
    import threading

    from sctab.data import loaders

    seen = []

    class Probe(loaders.SparseStreamLoader):
        def _fetch(self, block):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super()._fetch(block)

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ld = Probe(Store(sparse_store), "train", batch_size=64, shuffle=True, seed=0, rank=0, world_size=1,
               rows=None, drop_last=False, columns=(), block_row_groups=1)
    assert sum(len(b) for b in ld) == ld.n_rows and len(seen) > 1
    assert set(seen) == {min(19, mine + loaders.READ_AHEAD_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_csr_rows_take_and_concat_match_dense():
    from sctab.data.csr_rows import CSRRows

    rng = np.random.default_rng(0)
    x = np.where(rng.random((50, 30)) < 0.2, rng.random((50, 30)), 0).astype(np.float32)
    x[7] = 0  # an empty row
    rows, cols = np.nonzero(x)
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=50))])
    m = CSRRows(ptr, cols.astype(np.int32), x[rows, cols], 30)
    order = rng.permutation(50)
    assert np.array_equal(m.take(order).to_dense(), x[order])
    a, b = m.take(order[:20]).take(np.arange(3, 17)), m.take(order[20:])
    assert np.array_equal(CSRRows.concat([a, b]).to_dense(), np.concatenate([x[order[3:17]], x[order[20:]]]))
    assert np.array_equal(m.take(np.array([], np.int64)).to_dense(), np.zeros((0, 30), np.float32))
    assert torch.equal(m.take(order).to_torch().to_dense(), torch.from_numpy(x[order]))
    parts = [m.take(np.arange(0, 20)), m.slice(20, 35), m.take(np.arange(35, 50))]  # gather across parts
    assert np.array_equal(CSRRows.gather(parts, order).to_dense(), x[order])
    assert np.array_equal(CSRRows.gather(parts, order[:5]).to_dense(), x[order[:5]])


def test_sparse_memory_stays_bounded(sparse_store):
    split = Store(sparse_store).split("train")
    max_rg = max(r for _, _, r in split.row_groups)
    ld = make_loader(sparse_store, "train", batch_size=32, shuffle=True, block_row_groups=2, backend="sparse",
                     x_format="csr")
    list(ld)
    n, peak = _rows_and_peak_memory(ld)
    assert n == split.n_rows
    assert ld.max_rows_buffered <= 3 * 2 * max_rg + 32  # current + 2 read-ahead blocks, + leftovers
    assert peak < split.n_rows * 300 * 4 / 5, peak


def test_sparse_layout_errors(store_dir, sparse_store, tmp_path):
    with pytest.raises(StoreError, match="no sparse layout"):
        make_loader(store_dir, "train", batch_size=8, backend="sparse")
    with pytest.raises(LoaderError, match="x_format"):
        make_loader(store_dir, "train", batch_size=8, x_format="coo")
    root = tmp_path / "store"
    shutil.copytree(sparse_store, root)
    part = root / "sparse" / "train" / "part.0.arrow"
    with pa.OSFile(str(part)) as fh:  # read into memory, not mapped: the file is rewritten below
        tbl = pa.ipc.open_file(fh).read_all()

    def rewrite(t, chunk):
        with pa.ipc.new_file(part, t.schema) as w:
            for b in t.to_batches(max_chunksize=chunk):
                w.write_batch(b)

    rewrite(tbl, 50)  # record batches no longer the dense part's row groups
    with pytest.raises(StoreError, match="stale"):
        make_loader(root, "train", batch_size=8, backend="sparse")
    ind = tbl.column("indices").combine_chunks()
    vals = ind.values.to_numpy().copy()
    vals[3] = Store(root).n_genes  # a gene index past the end
    bad = pa.ListArray.from_arrays(ind.offsets, pa.array(vals))
    rewrite(tbl.set_column(tbl.schema.get_field_index("indices"), "indices", bad), 64)
    with pytest.raises(StoreError, match=r"part.0.arrow row group 0: a gene index outside"):
        list(make_loader(root, "train", batch_size=8, backend="sparse"))
