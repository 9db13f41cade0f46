"""Shared test helpers: comparing two whole stores, and running the ``wsizarr`` command.

``assert_same_store`` knows nothing of wsizarr's layout: it walks whatever zarr hierarchy each
store holds (root attributes, subgroups, 1-D tables, sharded image arrays), so it keeps working
when the store's schema changes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from itertools import product
from typing import Any

import numpy as np
import zarr

from wsizarr._locations import Location, parse_store_location

# Attribute keys that may differ between two runs that made the same store. Two identical
# extractions (directory, .zip and S3 alike) were found to write byte-identical attributes:
# no timestamps, timings or host names, and the package version is the same within one test
# session. So nothing is ignored unless a test says why.
VOLATILE_ATTRS: tuple[str, ...] = ()


# --- comparing stores ---------------------------------------------------------------------------


def open_group(store: Any, storage_options: Mapping[str, str] | None = None, *, stack: ExitStack | None = None) -> zarr.Group:
    """The root group of a store given as a ``zarr.Group``, a path (directory or ``.zip``), an
    ``s3://`` URL (with ``storage_options``) or a ``Location``, opened read-only through
    wsizarr's own location code (the store object a user's ``open_dataset`` reads)."""
    if isinstance(store, zarr.Group):
        return store
    location = store if isinstance(store, Location) else parse_store_location(os.fspath(store), storage_options)
    zstore = location.open("r")
    if stack is not None and hasattr(zstore, "close"):
        stack.callback(zstore.close)
    # the nodes actually stored, not the consolidated copy of their metadata (compared apart)
    return zarr.open_group(zstore, mode="r", use_consolidated=False)


def _consolidated(group: zarr.Group) -> Any:
    """The root's consolidated metadata as stored (``None`` when it has none)."""
    try:
        opened = zarr.open_group(group.store, path=group.path, mode="r", use_consolidated=True)
    except ValueError:  # asked for and absent
        return None
    consolidated = opened.metadata.consolidated_metadata
    return None if consolidated is None else _plain(consolidated.to_dict())


def _nodes(group: zarr.Group) -> tuple[dict[str, zarr.Array], dict[str, zarr.Group]]:
    arrays, groups = {}, {"/": group}
    with warnings.catch_warnings():  # objects outside the hierarchy (markers, locks) are not nodes
        warnings.filterwarnings("ignore", "Object at .* is not recognized as a component")
        members = group.members(max_depth=None)
    for path, node in members:
        (arrays if isinstance(node, zarr.Array) else groups)[path] = node
    return arrays, groups


def _plain(value: Any) -> Any:
    """JSON-like value with tuples as lists and numpy scalars as Python ones (comparable)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _attr_differences(a: Any, b: Any, where: str, ignore: frozenset[str]) -> Iterable[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key in ignore:
                continue
            if key not in b:
                yield f"{where}.{key}: only in the first store ({a[key]!r:.200})"
            elif key not in a:
                yield f"{where}.{key}: only in the second store ({b[key]!r:.200})"
            else:
                yield from _attr_differences(a[key], b[key], f"{where}.{key}", ignore)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _attr_differences(x, y, f"{where}[{i}]", ignore)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        yield f"{where}: {a!r:.200} != {b!r:.200}"


def _array_metadata(array: zarr.Array) -> dict[str, Any]:
    """Shape, data type, chunk grid, shards and codecs (everything but the attributes)."""
    metadata = _plain(array.metadata.to_dict())
    metadata.pop("attributes", None)
    return metadata


def _blocks(array: zarr.Array) -> Iterable[tuple[slice, ...]]:
    """The array's shards (or chunks when unsharded), one region at a time: memory stays at one
    shard whatever the array's size."""
    if array.ndim == 0:
        yield ()
        return
    block = array.shards or array.chunks
    counts = [max(1, -(-size // step)) for size, step in zip(array.shape, block)]
    for index in product(*map(range, counts)):
        yield tuple(slice(i * step, min((i + 1) * step, size)) for i, step, size in zip(index, block, array.shape))


def _first_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, ...] | None:
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
    else:
        differ = np.asarray(a != b)
    if differ.ndim == 0:
        return () if bool(differ) else None
    where = np.argwhere(differ)
    return tuple(int(i) for i in where[0]) if len(where) else None


def _value_difference(path: str, a: zarr.Array, b: zarr.Array) -> str | None:
    for region in _blocks(a):
        x, y = np.asarray(a[region]), np.asarray(b[region])
        index = _first_difference(x, y)
        if index is not None:
            absolute = tuple(s.start + i for s, i in zip(region, index)) + index[len(region):]
            return (f"array {path!r}: values differ first at index {absolute}: "
                    f"{np.asarray(x[index]).tolist()!r:.200} != {np.asarray(y[index]).tolist()!r:.200}")
    return None


def store_differences(
    a: Any, b: Any, *, ignore_attrs: Sequence[str] = (), ignore_arrays: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
) -> list[str]:
    """Every difference between two stores, one line each naming the node and where (empty when
    they hold the same arrays, metadata, values and attributes)."""
    ignore = frozenset((*VOLATILE_ATTRS, *ignore_attrs))
    with ExitStack() as stack:
        first, second = open_group(a, storage_options, stack=stack), open_group(b, storage_options, stack=stack)
        arrays_a, groups_a = _nodes(first)
        arrays_b, groups_b = _nodes(second)
        found: list[str] = []
        for kind, one, two in (("array", arrays_a, arrays_b), ("group", groups_a, groups_b)):
            if only := sorted(set(one) - set(two)):
                found.append(f"{kind}s only in the first store: {only}")
            if only := sorted(set(two) - set(one)):
                found.append(f"{kind}s only in the second store: {only}")
        found += (f"consolidated metadata {d}" for d in _attr_differences(
            _consolidated(first), _consolidated(second), "", ignore))
        for path in sorted(set(groups_a) & set(groups_b)):
            found += (f"group {path!r} attributes {d}" for d in _attr_differences(
                _plain(dict(groups_a[path].attrs)), _plain(dict(groups_b[path].attrs)), "", ignore))
        for path in sorted(set(arrays_a) & set(arrays_b) - set(ignore_arrays)):
            x, y = arrays_a[path], arrays_b[path]
            found += (f"array {path!r} attributes {d}" for d in _attr_differences(
                _plain(dict(x.attrs)), _plain(dict(y.attrs)), "", ignore))
            meta_x, meta_y = _array_metadata(x), _array_metadata(y)
            if meta_x != meta_y:
                keys = sorted(k for k in set(meta_x) | set(meta_y) if meta_x.get(k) != meta_y.get(k))
                found += (f"array {path!r} metadata {k}: {meta_x.get(k)!r:.300} != {meta_y.get(k)!r:.300}" for k in keys)
                continue
            if (difference := _value_difference(path, x, y)) is not None:
                found.append(difference)
        return found


def assert_same_store(
    a: Any, b: Any, *, ignore_attrs: Sequence[str] = (), ignore_arrays: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
) -> None:
    """Assert two stores are the same store: the same groups and arrays (walked recursively,
    whatever the layout), the same shape, data type, chunks, shards and codecs, identical values
    (compared shard by shard) and identical attributes.

    ``a`` and ``b`` are paths, ``.zip`` files, ``s3://`` URLs (opened with ``storage_options``),
    ``Location``s or open ``zarr.Group``s. ``ignore_attrs`` names attribute keys skipped at any
    depth of any node's attributes (for a test whose two runs differ there on purpose, e.g. the
    slide paths of a local and a remote run); ``ignore_arrays`` names arrays (by path, e.g.
    ``slides/path``) whose values may differ. The error names each differing array or
    attribute and, for values, the first differing index.
    """
    differences = store_differences(
        a, b, ignore_attrs=ignore_attrs, ignore_arrays=ignore_arrays, storage_options=storage_options,
    )
    assert not differences, f"{a} and {b} differ:\n  " + "\n  ".join(differences)


# --- the command line ---------------------------------------------------------------------------

WSIZARR = shutil.which("wsizarr")


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The command failed with exit code 1 and said why in one ``wsizarr: error:`` line (warnings
    aside, no traceback) containing every fragment."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("wsizarr: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("wsizarr: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def run(*argv: Any, expect: int | None = 0, env: Mapping[str, str] | None = None, cwd: Any = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``wsizarr ARGV`` (the installed entry point, in a fresh process) and assert its exit
    code is ``expect`` (``None``: any, unchecked). Never a traceback; a failure that says why
    says it in one ``wsizarr: error:`` line (check its words with ``assert_one_line_error``).

    Returns the ``CompletedProcess``: ``.stdout``, ``.stderr``, ``.returncode``.
    """
    assert WSIZARR, "the wsizarr entry point is not installed; pip install -e '.[test]'"
    result = subprocess.run([WSIZARR, *map(str, argv)], capture_output=True, text=True, cwd=cwd,
                            env=None if env is None else dict(env), timeout=timeout)
    if expect is not None:
        assert result.returncode == expect, (
            f"wsizarr {' '.join(map(str, argv))}: exit code {result.returncode}, expected {expect}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    if expect is not None:
        assert "Traceback" not in result.stderr, result.stderr
        said = [line for line in result.stderr.splitlines() if line.startswith("wsizarr: error: ")]
        if result.returncode == 1 and said:  # verify's failure is its report, with no error line
            assert_one_line_error(result)
    return result


def storage_option_args(options: Mapping[str, str] | None) -> list[str]:
    """``--storage-option key=value`` arguments for the command line."""
    return [f"--storage-option={key}={value}" for key, value in (options or {}).items()]


def store_bytes(store: Any, storage_options: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Every object of a store (zarr's or not: locks, markers) by key, read through the store
    wsizarr opens: byte-for-byte what is there, for "nothing changed" checks."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    location = store if isinstance(store, Location) else parse_store_location(os.fspath(store), storage_options)
    zstore = location.open("r")

    async def everything() -> dict[str, bytes]:
        keys = sorted([key async for key in zstore.list()])
        found = {}
        for key in keys:
            buffer = await zstore.get(key, prototype=default_buffer_prototype())
            found[key] = b"" if buffer is None else buffer.to_bytes()
        return found

    try:
        return sync(everything())
    finally:
        if hasattr(zstore, "close"):
            zstore.close()


def write_rectangles(
    path: Any, boxes: Iterable[tuple[float, float, float, float]], label: str | Sequence[str] = "region",
) -> Any:
    """An ASAP XML file of one ``Rectangle`` annotation per ``(x0, y0, x1, y1)`` box (level-0
    pixels), all in group ``label`` (or box ``k`` in ``label[k]``): annotations for a real slide
    that comes without any."""
    boxes = list(boxes)
    labels = [label] * len(boxes) if isinstance(label, str) else list(label)
    annotations = "".join(
        f'<Annotation Name="r{i}" Type="Rectangle" PartOfGroup="{group}"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(
            [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
        + "</Coordinates></Annotation>"
        for i, ((x0, y0, x1, y1), group) in enumerate(zip(boxes, labels, strict=True))
    )
    with open(path, "w", encoding="utf-8") as file:
        file.write(f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{annotations}</Annotations></ASAP_Annotations>')
    return path
