"""Reading and writing the idx format that MNIST and Fashion-MNIST ship in.

An idx file is a 4-byte magic (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. Files may
be gzip-compressed (``.gz``); both forms are read.
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import DataError

# Type codes from the format's definition; MNIST uses only 0x08 (uint8).
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, source="<bytes>") -> np.ndarray:
    """Returns the array held in idx bytes `data`; raises DataError naming `source`.

    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
    array([7, 9], dtype=uint8)
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{source}: not an idx file (bad magic {data[:4].hex() or 'empty'})")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: idx header truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{source}: idx file truncated or padded: {len(data)} bytes, "
            f"expected {expected} for shape {shape}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def encode_idx(array: np.ndarray) -> bytes:
    """Returns `array` as idx bytes (uint8 only, the type MNIST uses)."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_idx writes uint8 only, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def read_idx_bytes(path) -> bytes:
    """Returns the uncompressed bytes of the idx file at `path` (``.gz`` or not)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None
    return raw


def read_idx(path) -> np.ndarray:
    """Returns the array in the idx file at `path`; raises DataError naming it."""
    return parse_idx(read_idx_bytes(path), source=str(path))
