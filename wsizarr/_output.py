"""Files the commands write for a person (reports, contact sheets): never over a user's file
unless asked, and never half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import ParameterError, option

__all__ = ["check_output_file", "output_file"]


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """``path`` as a ``Path`` once a file can be written there: its folder exists, it is not a
    folder, and it names no existing file unless ``overwrite``; ``ParameterError`` otherwise."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ParameterError(f"{path}: its folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ParameterError(f"{path}: is a folder; name a file to write")
    if path.exists() and not overwrite:
        raise ParameterError(f"{path}: exists; choose another name, or pass {option('overwrite', True)} to replace it")
    return path


@contextmanager
def output_file(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; it is renamed over ``path`` only when
    the block succeeds (see ``check_output_file`` for what is refused)."""
    path = check_output_file(path, overwrite=overwrite)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
