"""Files the commands write for a person (reports, contact sheets): never over a user's file
unless asked, and never half-written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import ParameterError, option

__all__ = ["check_output_file", "new_partial_file", "output_file"]


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


def new_partial_file(path: Path) -> tuple[int, Path]:
    """Create a new, empty hidden file beside ``path`` to be renamed over it when complete, and
    return its open descriptor (for writing) and its path. Its mode is what the umask gives a
    new file, as for any other tool (``tempfile.mkstemp`` would make it 0600)."""
    while True:
        partial = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        try:
            return os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), partial
        except FileExistsError:
            continue


@contextmanager
def output_file(path: str | os.PathLike[str], *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; it is renamed over ``path`` only when
    the block succeeds (see ``check_output_file`` for what is refused)."""
    path = check_output_file(path, overwrite=overwrite)
    fd, partial = new_partial_file(path)
    os.close(fd)
    try:
        yield Path(partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
