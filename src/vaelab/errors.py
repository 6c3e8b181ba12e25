"""The one exception type a user of vaelab sees, and its kinds.

Anything the user can cause (a bad flag, a missing file, a corrupt checkpoint)
raises a :class:`VaelabError` whose message is one line naming the file, field
or value at fault. The CLI prints that line without a traceback.
"""


class VaelabError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class ConfigError(VaelabError):
    """A config field, preset or flag is unknown or out of range."""


class DataError(VaelabError):
    """A dataset is unknown, missing, truncated or fails its checksum."""


class CheckpointError(VaelabError):
    """A checkpoint or run directory cannot be read or written."""


def choices_error(kind: str, value, choices, cls=ConfigError) -> VaelabError:
    """Returns an error saying `value` is not one of `choices`, listing them."""
    listed = ", ".join(str(c) for c in choices)
    return cls(f"unknown {kind} {value!r}; choose one of: {listed}")
