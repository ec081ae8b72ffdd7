"""What the one saved config is made of: :class:`ConfigError` and :class:`Settings`, the base of every model
family's own settings.

Each family module declares a ``Settings`` dataclass with its fields, their defaults and its checks; the one
:class:`~colab_utils.config.Config` nests the settings of the family it names (``config.model``) next to the
fields every family shares. This module sits below both, so families never import the config.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


def _wrong_type(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where a field's ``default`` does (a value of a hand-written file), or None."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "must be a whole number"
    if isinstance(default, float):
        return None if isinstance(value, numbers.Real) and not isinstance(value, bool) else "must be a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a text value"
    if isinstance(default, tuple):
        return None if isinstance(value, tuple) else "must be a list"
    return None


@dataclass
class Settings:
    """Base of a family's settings: a dataclass of plain values (tuples, not lists), checked on creation.

    Subclasses declare fields with defaults and override :meth:`check`, calling :meth:`bad` for a wrong value.
    """

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
            if (why := _wrong_type(getattr(self, f.name), f.default)) is not None:
                self.bad(f.name, why)

    def check(self, config: Any) -> None:
        """Raise :class:`ConfigError` (through :meth:`bad`) for a value that cannot work with ``config``."""

    def bad(self, name: str, why: str) -> None:
        raise ConfigError(f"Config.model.{name}={getattr(self, name)!r}: {why}")

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))
