"""A run's records, read and checked: metrics.jsonl (one line an epoch) and eval.json.

Every reader of a run (``runs``, ``compare``, ``report``, ``--resume``, a
sweep's summary) goes through these, so a record holding the wrong types (a
hand edit, another tool's file) is one line naming the file and the field,
and ``vaelab runs`` lists that run as broken instead of failing on it.
"""

from pathlib import Path

from vaelab.errors import CheckpointError
from vaelab.fileio import read_json, read_jsonl

# Every line of metrics.jsonl has these; the others (train_objective, val_elbo,
# a model's scores) are numbers too.
METRICS_FIELDS = ("epoch", "train_elbo", "test_elbo", "train_seconds")
# eval.json's own fields and their types; a model's scores (count_confusion, …) are its own.
_EVAL_NUMBERS = ("test_elbo", "test_log_likelihood", "seconds")
_EVAL_TEXTS = ("split", "binarize", "backend")


def is_number(value) -> bool:
    """Whether `value` is a JSON number (True and False are not, though Python counts them as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value, least: int) -> bool:
    """Whether `value` is a whole number (not a bool) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def read_metrics(path) -> list:
    """Returns the epochs' records of metrics.jsonl at `path` ([] if there is none); raises CheckpointError.

    Each line must hold the common fields, an integer epoch of at least 1 and
    numbers elsewhere (NaN where an epoch diverged).
    """
    path = Path(path)
    records = read_jsonl(path)
    for number, record in enumerate(records, 1):
        missing = [k for k in METRICS_FIELDS if k not in record]
        if missing:
            raise CheckpointError(f"{path}: line {number} lacks {', '.join(missing)}")
        epoch = record["epoch"]
        if not is_count(epoch, 1):
            raise CheckpointError(
                f"{path}: line {number}: epoch must be a whole number from 1, got {epoch!r}"
            )
        for key, value in record.items():
            if key != "epoch" and not is_number(value):
                raise CheckpointError(f"{path}: line {number}: {key} must be a number, got {value!r}")
    return records


def read_evaluation(path, default=None):
    """Returns eval.json at `path` (`default` if none); raises CheckpointError on a mistyped field."""
    path = Path(path)
    result = read_json(path, default=None)
    if result is None:
        return default
    for key in _EVAL_NUMBERS:
        if key in result and result[key] is not None and not is_number(result[key]):
            raise CheckpointError(f"{path}: {key} must be a number, got {result[key]!r}")
    for key in _EVAL_TEXTS:
        if key in result and not isinstance(result[key], str):
            raise CheckpointError(f"{path}: {key} must be text, got {result[key]!r}")
    for key in ("iw_samples", "num_images"):
        value = result.get(key)
        if value is not None and not is_count(value, 1):
            raise CheckpointError(f"{path}: {key} must be a whole number from 1, got {value!r}")
    return result


__all__ = ["METRICS_FIELDS", "is_count", "is_number", "read_evaluation", "read_metrics"]
