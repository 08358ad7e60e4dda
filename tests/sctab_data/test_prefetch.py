"""sctab.data.prefetch: the read-ahead hint the sparse loader gives for a memory-mapped record batch."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest

from sctab.data.prefetch import batch_span, will_need


def _ipc(tmp_path, n=5000):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 2000, offsets[-1], dtype=np.int32)))
    values = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.random(offsets[-1], dtype=np.float32)))
    batch = pa.record_batch([indices, values, pa.array(rng.integers(0, 9, n))], names=["indices", "values", "y"])
    path = tmp_path / "part.0.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    return path, batch


def test_the_span_covers_every_buffer_of_a_memory_mapped_batch(tmp_path):
    path, written = _ipc(tmp_path)
    mapped = pa.ipc.open_file(pa.memory_map(str(path)))
    batch = mapped.get_batch(0)
    lo, hi = batch_span(batch)
    bufs = [b for c in batch.columns for b in c.buffers() if b is not None and b.size]
    assert len(bufs) >= 5  # offsets and values of both list columns, the labels
    assert all(lo <= b.address and b.address + b.size <= hi for b in bufs)
    assert hi - lo <= path.stat().st_size  # one body inside the file
    if sys.platform.startswith("linux"):
        advised = will_need(batch)
        assert advised >= hi - lo
    assert batch.equals(written)  # advice changes nothing read


def test_advice_on_an_empty_batch_is_nothing():
    empty = pa.record_batch([pa.array([], pa.int64())], names=["y"])
    assert batch_span(empty) is None and will_need(empty) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise semantics checked on Linux")
def test_advice_on_heap_memory_is_harmless():
    batch = pa.record_batch([pa.array(np.arange(100_000))], names=["y"])  # not a mapped file
    assert will_need(batch) >= 800_000 and batch.column(0).to_numpy()[-1] == 99_999
