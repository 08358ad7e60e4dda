"""The store's parquet pages carry CRC32 checksums, and every reader checks them: a flipped byte in a data page
is a StoreError naming the file, not other numbers."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from sctab.data.loaders import make_loader
from sctab.data.store import Store, StoreError


def _flip_in_data_page(path, column: str) -> None:
    """Flip the last byte of ``column``'s chunk in row group 0: the end of its last page's data, past any header."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.split(".")[0] == column)
    start = min(o for o in (col.dictionary_page_offset, col.data_page_offset) if o is not None and o > 0)
    at = start + col.total_compressed_size - 1
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def store_copy(store_dir, tmp_path):
    return shutil.copytree(store_dir, tmp_path / "store")


def test_every_store_file_has_page_checksums(store_copy):
    files = sorted(store_copy.rglob("*.parquet"))
    assert any(f.parent.name == "train" for f in files) and (store_copy / "var.parquet") in files
    for f in files:
        pq.ParquetFile(f, page_checksum_verification=True).read()  # as written: every page checks out
        first = pq.ParquetFile(f).schema_arrow.names[0]
        _flip_in_data_page(f, first)
        with pytest.raises(OSError, match="CRC"):  # the page carries a CRC, and it no longer matches
            pq.ParquetFile(f, page_checksum_verification=True).read()


def test_flipped_byte_in_a_part_names_the_file(store_copy):
    part = sorted((store_copy / "train").glob("part.*.parquet"))[0]
    _flip_in_data_page(part, "X")
    store = Store(store_copy)
    with pytest.raises(StoreError, match=str(part).replace(".", r"\.")) as e:
        store.read_row_group(part, 0)
    assert "CRC" in str(e.value) or "checksum" in str(e.value).lower(), e.value
    with pytest.raises(StoreError, match=part.name):
        for _ in make_loader(store, "train", batch_size=64, shuffle=False):
            pass


def test_flipped_byte_in_obs_columns_and_var_names_the_file(store_copy):
    part = sorted((store_copy / "val").glob("part.*.parquet"))[0]
    _flip_in_data_page(part, "cell_type")
    with pytest.raises(StoreError, match=part.name):
        Store(store_copy).read_obs("val")
    var = store_copy / "var.parquet"
    _flip_in_data_page(var, "feature_id")
    with pytest.raises(StoreError, match="var.parquet"):
        Store(store_copy)


# ------------------------------------------------------------------ the sparse layout (Arrow IPC) carries digests
def _sparse_copy(store_copy):
    from sctab.data.store_writer import write_sparse_layout

    write_sparse_layout(store_copy)
    return sorted((store_copy / "sparse" / "train").glob("part.*.arrow"))[0]


def _flip_in_column(path, column: str) -> None:
    """Flip a byte inside record batch 0's flat ``column`` data, found by its bytes in the file."""
    import numpy as np
    import pyarrow as pa

    data = bytearray(path.read_bytes())  # read into memory: the file is rewritten below, a map of it would break
    flat = np.asarray(pa.ipc.open_file(pa.py_buffer(bytes(data))).get_batch(0).column(column).flatten())
    window = flat[len(flat) // 2: len(flat) // 2 + 8].tobytes()
    at = bytes(data).find(window)
    assert at > 0 and bytes(data).find(window, at + 1) == -1, "the window must be found once"
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))


def _read_all_sparse(store_dir):
    for _ in make_loader(Store(store_dir), "train", batch_size=64, shuffle=False, backend="sparse"):
        pass


def test_every_sparse_batch_carries_a_digest_that_checks_out(store_copy):
    import pyarrow as pa

    from sctab.data.checksum import KEY, batch_digest

    part = _sparse_copy(store_copy)
    with pa.memory_map(str(part)) as mm:
        reader = pa.ipc.open_file(mm)
        for i in range(reader.num_record_batches):
            batch, meta = reader.get_batch_with_custom_metadata(i)
            assert dict(meta)[KEY] == batch_digest(batch)
    _read_all_sparse(store_copy)  # as written, every batch reads


@pytest.mark.parametrize("column", ["values", "indices"])
def test_flipped_byte_in_a_sparse_part_names_the_file(store_copy, column):
    part = _sparse_copy(store_copy)
    _flip_in_column(part, column)
    with pytest.raises(StoreError, match=part.name) as e:
        _read_all_sparse(store_copy)
    assert "checksum mismatch" in str(e.value) and "record batch 0" in str(e.value), e.value


def test_a_sparse_layout_written_before_digests_reads_as_before(store_copy):
    import pyarrow as pa

    part = _sparse_copy(store_copy)
    reader = pa.ipc.open_file(pa.py_buffer(part.read_bytes()))  # in memory: the file is rewritten below
    batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    with pa.ipc.new_file(part, batches[0].schema) as w:  # no custom metadata: a layout from before
        for b in batches:
            w.write_batch(b)
    _read_all_sparse(store_copy)
