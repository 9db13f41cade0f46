"""The ``wsizarr`` command line: the parser made from one module per command, and how a
command's errors, interruptions and warnings reach the terminal."""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from .._errors import WsizarrError, as_flag
from . import (
    _annotations,
    _demo,
    _embed,
    _export,
    _extract,
    _info,
    _migrate,
    _overlay,
    _pack,
    _preview,
    _report,
    _slide,
    _subset,
    _unlock,
    _verify,
)
from ._common import printable

__all__ = ["main"]

# in the order `wsizarr --help` lists them
_COMMANDS = (
    _extract, _annotations, _slide, _info, _pack, _unlock, _migrate, _verify, _export, _preview, _overlay,
    _report, _embed, _subset, _demo,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsizarr", description="Annotation-driven patch extraction from whole-slide images into Zarr v3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.register(commands)  # each sets its ``run`` (and ``on_interrupt`` where it differs)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops where it is and can be resumed."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """wsizarr's own warnings (a stale lock taken over) as one line on stderr."""
    from ..store._lock import StaleLockWarning

    if issubclass(category, StaleLockWarning):
        print(f"wsizarr: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


_default_show_warning = warnings.showwarning


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 64 MiB instead of returning them to the system:
    every shard task allocates tens of MB afresh in ~200-KB pieces (decoded tiles, encoded
    chunks) and faulting fresh pages in cost as much CPU as compressing them (measured: an
    extraction's page faults fell from 340k to 130k, its wall time by 20-30 %). Nothing on
    other C libraries."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: larger blocks still come from mmap
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: free memory kept before trimming the heap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 a user error, 130 interrupted
    by Ctrl-C, 143 by SIGTERM)."""
    args = _parser().parse_args(argv)
    if args.command in ("extract", "demo"):
        _keep_freed_memory()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    previous_show_warning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _run(args)
    finally:
        warnings.showwarning = previous_show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """The command's exit code: its own (``verify``), else 0; a ``WsizarrError`` as one line."""
    try:
        code = args.run(args)
    except WsizarrError as exc:
        # one line, whatever it quotes; options named as flags
        print(f"wsizarr: error: {printable(exc.render(as_flag))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        fix = getattr(args, "on_interrupt", "finish the store with --resume")
        print(f"\nwsizarr: interrupted; {fix}", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    return code or 0
