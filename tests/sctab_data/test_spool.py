"""The count spool: rows added in census order come back in store order, exactly, bucket by bucket."""

import numpy as np
import pytest
import scipy.sparse as sp

from sctab.data.spool import CountSpool


def test_rows_come_back_in_position_order_exactly(tmp_path):
    rng = np.random.default_rng(0)
    n, g, bucket = 103, 17, 20
    x = sp.random(n, g, density=0.3, format="csr", random_state=1) * 50
    x.data = np.round(x.data)  # integer counts: spooled as float32, read back exactly
    x[5] = 0  # an empty row
    x = sp.csr_matrix(x)
    x.data[0] = 0.5 + 2**-30  # one value float32 cannot hold: that piece stays float64
    place = rng.permutation(n)  # row i of x goes to output position place[i]
    with CountSpool(tmp_path / "spool", n, bucket, g) as spool:
        for s in range(0, n, 25):  # added in chunks of "census order"
            spool.add(place[s:s + 25], x[s:s + 25])
        assert len(spool) == 6
        got = sp.vstack([spool.bucket(b) for b in range(len(spool))]).tocsr()
        assert (tmp_path / "spool").exists()
    assert not (tmp_path / "spool").exists()  # removed with the block
    want = x[np.argsort(place)]
    assert got.shape == want.shape and got.dtype == np.float64
    assert np.array_equal(got.toarray(), want.toarray())


def test_an_incomplete_bucket_and_bad_positions_are_errors(tmp_path):
    with CountSpool(tmp_path / "s", 10, 4, 3) as spool:
        spool.add(np.array([0, 1, 2]), sp.csr_matrix(np.ones((3, 3))))
        with pytest.raises(ValueError, match="holds 3 of its 4 rows"):
            spool.bucket(0)
        with pytest.raises(ValueError, match="outside"):
            spool.add(np.array([10]), sp.csr_matrix(np.ones((1, 3))))
        with pytest.raises(ValueError, match="shape"):
            spool.add(np.array([3]), sp.csr_matrix(np.ones((1, 2))))
        spool.add(np.array([2]), sp.csr_matrix(np.ones((1, 3))))  # position 2 twice, 3 never
        with pytest.raises(ValueError, match="each of 0..3 once"):
            spool.bucket(0)
