"""Label maps: rename or merge labels (``glomerulus=Normal,sclerotic=Abnormal`` or a JSON file)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from .._errors import AnnotationError
from ._records import Annotation, first_line

__all__ = ["apply_label_map", "parse_label_map"]

def parse_label_map(text_or_path: str | Path) -> dict[str, str]:
    """Parse ``"old=new,old2=new2"`` or a JSON file ``{"old": "new"}`` into a label map."""
    candidate = Path(text_or_path)
    try:
        is_file = candidate.suffix.lower() == ".json" or candidate.is_file()
    except OSError:  # e.g. a map too long to be a file name
        is_file = False
    if is_file:
        try:
            mapping = json.loads(candidate.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise AnnotationError(
                f"{candidate}: cannot read the label map ({first_line(exc)}); give a JSON object"
            ) from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
            raise AnnotationError(
                f'{candidate}: a label map is a JSON object of label -> new label, e.g. {{"glomerulus": "Normal"}}'
            )
        return {str(k): v.strip() for k, v in mapping.items()}
    mapping = {}
    for item in str(text_or_path).split(","):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new or old in mapping:
            problem = f"{old!r} is mapped twice" if old in mapping else f"{item!r} is not old=new"
            raise AnnotationError(
                f"label map {text_or_path!r}: {problem}; write e.g. glomerulus=Normal,sclerotic=Abnormal"
            )
        mapping[old] = new
    return mapping


def apply_label_map(
    annotations: Iterable[Annotation], mapping: Mapping[str, str], *, keep_only: bool = False,
    strict: bool = False, order: Sequence[str] | None = None,
) -> list[Annotation]:
    """Rename (and merge) labels by ``mapping``; ids stay those of the file.

    ``keep_only`` drops annotations whose label the map does not name. ``strict`` refuses a map
    that names a label no annotation has (a typo); ``order`` (the fixed label list that gives
    stable codes across slides) refuses any resulting label that is not in it.
    """
    annotations = list(annotations)
    if strict:
        present = {a.label for a in annotations}
        unknown = sorted(set(mapping) - present)
        if unknown:
            raise AnnotationError(
                f"label map: {', '.join(map(repr, unknown))} is no annotation's label (labels: "
                f"{', '.join(sorted(str(p) for p in present))}); fix the spelling in the map"
            )
    out = []
    for annotation in annotations:
        if annotation.label in mapping:
            out.append(replace(annotation, label=mapping[annotation.label]))
        elif not keep_only:
            out.append(annotation)
    if order is not None:
        missing = sorted({a.label for a in out if a.label is not None} - set(order))
        if missing:
            raise AnnotationError(
                f"label order {','.join(order)}: labels {', '.join(map(repr, missing))} are not in it; "
                "add them to the order or map them to a listed label"
            )
    return out
