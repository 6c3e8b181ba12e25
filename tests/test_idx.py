import gzip

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vaelab.data.idx import encode_idx, parse_idx, read_idx
from vaelab.errors import DataError


def test_round_trip_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(encode_idx(images))
    (tmp_path / "b.gz").write_bytes(gzip.compress(encode_idx(images)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), images)


def test_wrong_magic_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"bad-idx: not an idx file"):
        read_idx(path)


def test_truncated_file_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "short-idx"
    path.write_bytes(encode_idx(np.zeros((10, 28, 28), np.uint8))[:-5])
    with pytest.raises(DataError, match=r"short-idx: idx file truncated"):
        read_idx(path)


def test_truncated_gzip_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((10, 28, 28), np.uint8)))[:40])
    with pytest.raises(DataError, match=r"cut.gz: corrupt or truncated gzip"):
        read_idx(path)


@given(st.binary(max_size=64))
def test_any_bytes_give_an_array_or_a_data_error(data):
    try:
        array = parse_idx(data)
    except DataError:
        return
    assert isinstance(array, np.ndarray)


@given(st.lists(st.integers(0, 5), min_size=1, max_size=3), st.integers(0, 40))
def test_valid_headers_parse_and_any_cut_is_a_data_error(shape, cut):
    data = encode_idx(np.ones(shape, np.uint8))
    assert parse_idx(data).shape == tuple(shape)
    if 0 < cut <= len(data):
        with pytest.raises(DataError):
            parse_idx(data[:-cut])
