"""The exception hierarchy: every error a user can cause is a ``WsizarrError``."""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = [
    "AnnotationError",
    "CorruptStoreError",
    "IncompleteStoreError",
    "ParameterError",
    "SlideError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "WsizarrError",
    "option",
]

_MARK = "\x1f"  # around an option's name (and value) inside a message; never shown
_OPTION = re.compile(f"{_MARK}([a-z_]+)(?:=(.*?))?{_MARK}")
_NO_VALUE = object()


def option(name: str, value: object = _NO_VALUE) -> str:
    """An option named in an error message: ``str(error)`` shows it in the library's words
    (``resume=True``, ``seed``), the command line as its flag (``--resume``, ``--seed``)."""
    shown = "" if value is _NO_VALUE else f"={value!r}"
    return f"{_MARK}{name}{shown}{_MARK}"


def _as_keyword(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


def as_flag(name: str, value: str | None) -> str:
    """How the command line names an option: ``--name-with-dashes`` (and its value)."""
    flag = "--" + name.replace("_", "-")
    if value is None or value == "True":
        return flag
    return f"{flag} {value.strip(chr(39))}"


class WsizarrError(Exception):
    """Base of every error wsizarr raises on bad input; its message names the file and the fix."""

    def __str__(self) -> str:
        return self.render(_as_keyword)

    def render(self, name_option: Callable[[str, str | None], str]) -> str:
        """The message with each option named by ``name_option(name, value or None)``."""
        return _OPTION.sub(lambda m: name_option(m[1], m[2]), super().__str__())


class ParameterError(WsizarrError, ValueError):
    """An invalid parameter (a level that does not exist, a negative patch size, ...)."""


class AnnotationError(WsizarrError, ValueError):
    """An annotation file that is missing, malformed, hostile or inconsistent."""


class SlideError(WsizarrError, OSError):
    """A slide that is missing or that OpenSlide cannot open or read."""


class StoreError(WsizarrError, OSError):
    """A patch store that cannot be created, resumed or opened."""


class StoreExistsError(StoreError, FileExistsError):
    """The output store exists and neither overwrite nor resume was asked for."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock (or took it over): one writer per store at a time."""


class IncompleteStoreError(StoreError):
    """The store was not finished (a crash or an interrupted run): resume the extraction."""


class CorruptStoreError(StoreError):
    """A shard or patch whose bytes are missing, truncated or damaged: ``detail`` says which
    (without the advice), ``patch`` is the damaged patch (None: the whole shard)."""

    def __init__(self, message: str, detail: str, patch: int | None = None) -> None:
        super().__init__(message)
        self.detail = detail
        self.patch = patch
