"""The exception hierarchy: every error a user can cause is a ``WsizarrError``."""

from __future__ import annotations

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
]


class WsizarrError(Exception):
    """Base of every error wsizarr raises on bad input; its message names the file and the fix."""


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
