"""Reading .npz files whatever they hold: arrays, or one line saying why not.

Each member's header (shape and dtype) is read and checked before its data:
an object array is refused (nothing is unpickled), and a header that claims
more bytes than the member holds, or more than this machine's memory, is
refused before anything is allocated.

>>> arrays = read_npz("mine.npz")           # {"train_images": array, ...}
"""

import os
import zipfile
from pathlib import Path

import numpy as np

from vaelab.errors import DataError


def memory_bytes() -> int:
    """Returns this machine's memory in bytes (1 TiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def read_npz(path, keys=None, what="a .npz of arrays") -> dict:
    """Returns the arrays of the .npz at `path` (only `keys`, if given, each required).

    Raises DataError naming the file for anything else: no file, not a zip,
    a member that is not an array, an object array, a header whose size the
    member or the memory cannot hold, a member cut short.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise DataError(f"{path}: not {what} (not a zip archive)") from None
    with archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        wanted = list(members) if keys is None else list(keys)
        missing = [k for k in wanted if k not in members]
        if missing:
            held = ", ".join(sorted(members)) or "none"
            raise DataError(f"{path}: missing array(s) {', '.join(map(repr, missing))} (has {held})")
        return {key: _read_member(archive, members[key], path, key, what) for key in wanted}


def _read_member(archive, info, path, key, what) -> np.ndarray:
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise DataError(f"{path}: array {key!r} holds Python objects; {what} holds numbers only")
            size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if size > info.file_size or size > memory_bytes():
                raise DataError(
                    f"{path}: array {key!r} claims {size:,} bytes of {shape} {dtype}, more than the file or "
                    "the memory holds"
                )
            data = member.read(size)
            if len(data) != size:
                raise ValueError("cut short")
            return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError, SyntaxError):
        raise DataError(f"{path}: array {key!r} is not readable (corrupt or cut short)") from None
