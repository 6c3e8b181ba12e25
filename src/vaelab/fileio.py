"""Writes that cannot half-happen: a temporary file in the same folder, then rename.

A reader sees either the old file or the new one, never a torn one, because
``os.replace`` within one filesystem is atomic.
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from vaelab.errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it over `path` on success.

    On any exception the temporary file is removed and `path` is untouched; an
    OSError (a full disk, say) is raised again naming `path`.

    >>> with atomic_path("out.npz") as tmp:
    ...     numpy.savez(tmp, x=x)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only or full folder: name the file the user knows
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            # Name the file the user knows, not the temporary one.
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def write_bytes(path, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, obj) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_jsonl(path, records) -> None:
    """Replaces `path` with `records`, one JSON object a line, atomically.

    Rewriting the whole (small) file keeps a metrics log whole even if the
    process dies mid-write; an append could leave half a line.
    """
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_bytes(path, text.encode())


def read_jsonl(path) -> list:
    """Returns the JSON objects in `path`, one a line; [] if it does not exist.

    A last line cut short (what a killed process or a full disk can leave) is
    dropped; any other line that is not a JSON object raises CheckpointError.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = [line for line in path.read_bytes().decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not text (not UTF-8)") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines) and not line.endswith("}"):
                break  # cut short
            raise CheckpointError(f"{path}: line {number} is not a JSON object") from None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_json(path, default=None):
    """Returns the JSON object in `path`, or `default` if there is no file; else raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        advice = "; `vaelab evaluate RUN` writes it again" if path.name == "eval.json" else ""
        raise CheckpointError(f"{path}: not valid JSON{advice}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return value
