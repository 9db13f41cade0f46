"""Annotation files -> ``Annotation`` records (level-0 pixel coordinates): the one reader.

Formats are recognised from the content: ASAP XML (``<ASAP_Annotations>``), Aperio ImageScope
XML (``<Annotations>``), QuPath GeoJSON (a FeatureCollection, a Feature, an array of them or a bare
geometry) and DSA / HistomicsUI annotation JSON (a document, or a list of documents, with
``elements``).
Objects that hold nothing usable (too few points, no area, lines) are skipped and counted; a file
is refused only when nothing usable is left, or at the first one with ``strict``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lxml import etree

from .._errors import AnnotationError, ParameterError
from .._text import count
from ._asap import read_asap
from ._dsa import dsa_documents, read_dsa
from ._geojson import read_geojson
from ._imagescope import read_imagescope
from ._records import (
    Annotation,
    AnnotationFile,
    Builder,
    LabelFrom,
    first_line,
    skip_counts,
)

__all__ = [
    "ANNOTATION_SUFFIXES", "annotation_note", "describe", "format_description", "read_annotation_file",
    "read_annotations",
]


ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")


_MAX_BYTES = 512 * 1024 * 1024


_XML_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")  # ASCII-compatible + wide


def read_annotations(path: str | Path, **options: Any) -> list[Annotation]:
    """Read the annotations of one file; ``options`` are those of ``read_annotation_file``.

    Coordinates are level-0 pixels. Raises ``AnnotationError`` with the file, the line or
    annotation and the fix when the file is missing, malformed, hostile or holds nothing usable.
    """
    return list(read_annotation_file(path, **options).annotations)


def read_annotation_file(
    path: str | Path, *, label_from: LabelFrom = "name", exclude_detections: bool = False,
    exclude_labels: Iterable[str] = (), strict: bool = False,
) -> AnnotationFile:
    """Read an annotation file (ASAP XML, Aperio ImageScope XML, QuPath GeoJSON or DSA JSON).

    ``label_from`` picks an ImageScope layer's label from its ``name`` first (default) or its
    ``attribute`` first; ``exclude_detections`` leaves out QuPath detection objects;
    annotations labelled one of ``exclude_labels`` become ``exclusions`` (areas to leave out).
    Degenerate objects are skipped and listed in ``skipped``, or refused with ``strict``.
    """
    if label_from not in ("name", "attribute"):
        raise ParameterError(f"label_from must be 'name' or 'attribute', got {label_from!r}; pass one of them")
    path = Path(path)
    data = _read_bytes(path)
    builder = Builder(path, strict=strict, exclude_labels=frozenset(exclude_labels))
    if _looks_like_json(data):
        document = _parse_json(path, data)
        if dsa_documents(document) is not None:
            read_dsa(builder, document)
            return builder.result("dsa")
        read_geojson(builder, document, exclude_detections)
        return builder.result("geojson")
    root = _parse_xml(path, data)
    if root.tag == "ASAP_Annotations":
        groups = read_asap(builder, root)
        return builder.result("asap", groups=groups)
    if root.tag == "Annotations":
        mpp = read_imagescope(builder, root, label_from)
        return builder.result("imagescope", mpp)
    raise AnnotationError(
        f"{path}: unknown annotation format (XML root <{root.tag}>); expected ASAP XML "
        "(<ASAP_Annotations>), Aperio ImageScope XML (<Annotations>), QuPath GeoJSON or DSA JSON"
    )


def _looks_like_json(data: bytes) -> bool:
    """True when the first character (after any byte-order mark, in UTF-8/16/32) is ``{`` or ``[``."""
    encoding = json.detect_encoding(data[:4])
    head = data[:64].decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n")
    return head[:1] in ("{", "[")


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)  # bytes: UTF-8 (with or without BOM), UTF-16 and UTF-32
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); re-export the annotations"
        ) from None
    except (ValueError, RecursionError) as exc:  # undecodable, a huge integer, nested too deeply
        reason = "nested too deeply" if isinstance(exc, RecursionError) else first_line(exc)
        raise AnnotationError(f"{path}: not valid JSON ({reason}); re-export the annotations") from None


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; check the path")
    size = path.stat().st_size
    if size == 0:
        raise AnnotationError(f"{path}: the annotation file is empty; export the annotations again")
    if size > _MAX_BYTES:
        raise AnnotationError(
            f"{path}: {size} bytes is too large for an annotation file (limit {_MAX_BYTES} bytes); "
            "export fewer objects, e.g. without detections"
        )
    return path.read_bytes()


def _parse_xml(path: Path, data: bytes) -> etree._Element:
    # Entity declarations are refused outright: no expansion (billion laughs), no external
    # entities (XXE), and the parser never touches the network.
    if any("<!ENTITY".encode(encoding) in data for encoding in _XML_ENCODINGS):
        raise AnnotationError(
            f"{path}: the XML declares entities (<!ENTITY>), which wsizarr refuses for safety; "
            "remove the DOCTYPE from the file"
        )
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno is not None else "?"
        raise AnnotationError(
            f"{path}:{line}: not well-formed XML ({exc.msg}); re-export the annotations"
        ) from None


_FORMAT_NAMES = {
    "asap": "ASAP XML", "imagescope": "Aperio ImageScope XML", "geojson": "QuPath GeoJSON",
    "dsa": "DSA / HistomicsUI JSON",
}


def describe(
    result: AnnotationFile, path: str | Path, slide_dimensions: tuple[int, int] | None = None
) -> dict[str, Any]:
    """What a file holds, as plain JSON-ready data: format, counts per label and type, where
    each label came from, repaired / skipped objects, exclusions, warnings and (given the
    slide's level-0 ``slide_dimensions``) the annotations entirely outside the slide."""
    labels: dict[str | None, Counter[str]] = {}
    for a in result.annotations:
        labels.setdefault(a.label, Counter())[a.type] += 1
    outside = None
    if slide_dimensions is not None:
        width, height = slide_dimensions
        outside = sum(
            1 for a in result.annotations
            if a.bbox[2] < 0 or a.bbox[3] < 0 or a.bbox[0] >= width or a.bbox[1] >= height
        )
    return {
        "file": str(path),
        "format": result.format,
        "annotations": len(result.annotations),
        "labels": [
            {
                "label": label, "count": sum(types.values()), "types": dict(types),
                "source": result.label_sources.get(label, "") if label is not None else "",
            }
            for label, types in sorted(labels.items(), key=lambda item: (item[0] is None, str(item[0])))
        ],
        "repaired": result.repaired,
        "skipped": dict(Counter(s.reason for s in result.skipped)),
        "skipped_at": [f"{s.where} ({s.reason})" for s in result.skipped[:10]],
        "exclusions": len(result.exclusions),
        "outside_slide": outside,
        "warnings": list(result.warnings),
    }


def format_description(description: Mapping[str, Any]) -> str:
    """``describe``'s data as lines of text."""
    d = description
    lines = [
        f"{d['file']}: {_FORMAT_NAMES[d['format']]}, {count(d['annotations'], 'annotation')}, "
        f"{count(sum(1 for entry in d['labels'] if entry['label'] is not None), 'label')}"
    ]
    names = ["(unlabelled)" if entry["label"] is None else entry["label"] for entry in d["labels"]]
    width = max(map(len, names), default=0)
    for name, entry in zip(names, d["labels"]):
        types = ", ".join(f"{kind} {n}" for kind, n in entry["types"].items())
        source = f"  from {entry['source']}" if entry["source"] else ""
        lines.append(f"  {name:<{width}} {entry['count']:>6}  {types}{source}")
    skipped = sum(d["skipped"].values())
    lines.append(
        f"repaired {d['repaired']}, skipped {skipped}"
        + (f" ({', '.join(f'{reason} {n}' for reason, n in d['skipped'].items())})" if skipped else "")
        + f", exclusions {d['exclusions']}"
        + ("" if d["outside_slide"] is None else f", outside the slide {d['outside_slide']}")
    )
    lines += [f"  skipped at {where}" for where in d["skipped_at"]]
    if skipped > len(d["skipped_at"]):
        lines.append(f"  ... and {skipped - len(d['skipped_at'])} more")
    lines += [f"warning: {warning}" for warning in d["warnings"]]
    return "\n".join(lines)


def annotation_note(result: AnnotationFile, file: str) -> str | None:
    """One line on what reading ``file`` skipped or warned about; None when nothing."""
    if not (result.skipped or result.warnings):
        return None
    parts = [count(len(result.annotations), "annotation")]
    if result.skipped:
        parts.append(skip_counts(result.skipped))
    if result.warnings:
        parts.append(f"{count(len(result.warnings), 'warning')} (first: {result.warnings[0]})")
    return f"{file}: {'; '.join(parts)}; `wsizarr annotations {file}` tells more"
