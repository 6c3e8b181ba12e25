"""Settings declared once: a dataclass field carries its default, help and range.

Config files, command-line flags, validation, config.json and the report all
read the same declaration, so a setting is written in one place:

>>> @dataclass
... class Settings:
...     z_dim: int = setting(20, "latent size", at_least=1)
>>> flag_name("z_dim")
'--z-dim'
"""

import dataclasses
import math
import typing
from dataclasses import MISSING, Field, field

from vaelab.errors import ConfigError, choices_error


def setting(
    default,
    help: str,
    *,
    choices=None,
    at_least=None,
    at_most=None,
    positive=False,
    probability=False,
    check=None,
):
    """Returns a dataclass field with its default and what the flag, the checks and the report need.

    choices: a tuple, or a function returning one (for registries filled later);
    at_least, at_most: the smallest and largest allowed number (each item's, for a tuple);
    positive: must be > 0; probability: must be in (0, 1) (None allowed if the type allows it);
    check: a function value -> None, or the end of an error message ("must be ..., got ...").
    """
    meta = {
        "help": help,
        "choices": choices,
        "at_least": at_least,
        "at_most": at_most,
        "positive": positive,
        "probability": probability,
        "check": check,
    }
    return field(default=default, metadata=meta)


def declared(cls) -> dict[str, Field]:
    """Returns the fields of settings dataclass `cls` by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def field_type(cls, name: str):
    """Returns the type hint of field `name` of `cls`."""
    return typing.get_type_hints(cls)[name]


def flag_name(name: str) -> str:
    """Returns the command-line flag of field `name`: z_dim -> --z-dim."""
    return "--" + name.replace("_", "-")


def default_of(f: Field):
    return f.default if f.default is not MISSING else f.default_factory()


def choices_of(f: Field):
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def coerce(hint, key: str, value, source: str):
    """Returns `value` as type `hint` of field `key`; raises ConfigError naming both and `source`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            items = value.split(",")
            if items[-1].strip() == "" and len(items) > 1:
                items.pop()  # "16," as Python writes a tuple of one
            if value.strip() and not all(v.strip() for v in items):  # "16,,8": a number left out?
                raise ConfigError(
                    f"{source}: {key} {value!r} has an empty item; numbers go between single commas"
                )
            value = [v for v in items if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(_scalar(key, v, args[0], source) for v in value)
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    return _scalar(key, value, hint, source)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _scalar(key, value, hint, source):
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, str):
        try:
            return hint(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")


def check_values(settings) -> None:
    """Raises ConfigError for the first field of `settings` outside what its declaration allows.

    The error's ``field`` names the field, so a caller can say where its value came from.
    """
    for f in dataclasses.fields(settings):
        try:
            _check_field(f, getattr(settings, f.name))
        except ConfigError as e:
            e.field = f.name
            raise


def _check_field(f: dataclasses.Field, value) -> None:
    """Raises ConfigError if `value` is outside what field `f`'s declaration allows."""
    meta = f.metadata
    if not meta or value is None:
        return
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise choices_error(f.name, value, choices)
    items = value if isinstance(value, tuple) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise ConfigError(f"{f.name} must be a finite number, got {value}")
    if meta["at_least"] is not None:
        if isinstance(value, tuple) and not value:
            raise ConfigError(f"{f.name} must hold one or more numbers, got {value}")
        if any(v < meta["at_least"] for v in items):
            raise ConfigError(f"{f.name} must be at least {meta['at_least']}, got {value}")
    if meta.get("at_most") is not None and any(v > meta["at_most"] for v in items):
        raise ConfigError(f"{f.name} must be at most {meta['at_most']}, got {value}")
    if meta["positive"] and not all(v > 0 for v in items):
        raise ConfigError(f"{f.name} must be positive, got {value}")
    if meta["probability"] and not 0 < value < 1:
        raise ConfigError(f"{f.name} must be a probability in (0, 1), got {value}")
    if meta["check"] is not None:
        problem = meta["check"](value)
        if problem:
            raise ConfigError(f"{f.name} {problem}")


def plain(value):
    """Returns a setting's value as JSON-ready data (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value
