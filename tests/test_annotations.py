from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from wsizarr import AnnotationError, read_annotation_file, read_annotations

from .conftest import ANNOTATIONS

ASAP_HEAD = '<?xml version="1.0"?>\n<ASAP_Annotations><Annotations>\n'
ASAP_TAIL = "</Annotations><AnnotationGroups /></ASAP_Annotations>\n"


def _asap(tmp_path: Path, body: str, head: str = ASAP_HEAD) -> Path:
    path = tmp_path / "a.xml"
    path.write_text(head + body + ASAP_TAIL)
    return path


def _polygon(coords: str, name: str = "A", kind: str = "Polygon", group: str = "glom") -> str:
    return (
        f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
        f"<Coordinates>{coords}</Coordinates></Annotation>\n"
    )


def _coord(order, x, y) -> str:
    return f'<Coordinate Order="{order}" X="{x}" Y="{y}" />'


def test_wsipacker_decimal_commas():
    (annotation,) = read_annotations(ANNOTATIONS / "wsipacker_example.xml")
    assert annotation.id == 0 and annotation.name == "Annotation 0"
    assert annotation.label is None and annotation.type == "Polygon"
    assert annotation.vertices.shape == (42, 2)
    np.testing.assert_allclose(annotation.vertices[0], [543.020264, 335.044464])
    x_min, y_min, x_max, y_max = annotation.bbox
    assert 314 < x_min < 316 and 542 < x_max < 544 and 319 < y_min < 321 and 624 < y_max < 627


def test_wsiprocess_classification():
    annotations = read_annotations(ANNOTATIONS / "wsiprocess_CMU-1_classification.xml")
    assert len(annotations) == 5
    assert [a.id for a in annotations] == list(range(5))
    assert {a.type for a in annotations} == {"Spline", "Polygon", "Dot"}
    assert {a.label for a in annotations} == {"malignant", "benign"}
    first = annotations[0]
    assert first.type == "Spline" and first.vertices.shape == (45, 2)
    np.testing.assert_allclose(first.vertices[0], [6197.44482, 20333.0215])
    for dot in (a for a in annotations if a.type == "Dot"):
        assert dot.vertices.shape == (1, 2)


def test_wsiprocess_detection_and_segmentation():
    result = read_annotation_file(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml")
    detection = result.annotations
    assert len(detection) == 24
    assert {a.type for a in detection} == {"Rectangle", "PointSet"}  # its one "Dot" has 4 coordinates
    (warning,) = result.warnings
    assert warning == "188: annotation 'Annotation 24': a Dot with several coordinates, read as a PointSet"
    assert {a.label for a in detection} == {"malignant", "benign", "cell"}
    assert all(a.vertices.shape == (4, 2) for a in detection if a.type == "Rectangle")
    segmentation = read_annotations(ANNOTATIONS / "wsiprocess_CMU-1_segmentation.xml")
    assert segmentation and {a.type for a in segmentation} <= {"Polygon", "Spline"}
    assert all(np.isfinite(a.vertices).all() and len(a.vertices) >= 3 for a in segmentation)


def test_vertices_follow_order_and_are_read_only(tmp_path):
    coords = _coord(2, 10, 30) + _coord(0, 0, 0) + _coord(1, 10, 0)
    (annotation,) = read_annotations(_asap(tmp_path, _polygon(coords, group="None")))
    np.testing.assert_array_equal(annotation.vertices, [[0, 0], [10, 0], [10, 30]])
    assert annotation.label is None
    assert annotation.bbox == (0.0, 0.0, 10.0, 30.0)
    with pytest.raises(ValueError):
        annotation.vertices[0, 0] = 5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_polygon(_coord(0, "abc", 1) + _coord(1, 2, 2) + _coord(2, 3, 1)), r"a.xml:3: annotation 'A': X='abc' is not a finite number"),
        (_polygon(_coord(0, "nan", 1) + _coord(1, 2, 2) + _coord(2, 3, 1)), r"X='nan' is not a finite number"),
        (_polygon(_coord(0, 1, "inf") + _coord(1, 2, 2) + _coord(2, 3, 1)), r"Y='inf' is not a finite number"),
        (_polygon(_coord(0, 1, 1) + _coord(1, 2, 2)), r"a Polygon needs at least 3 coordinates, found 2"),
        (_polygon(_coord(0, 1, 1) + _coord(0, 2, 2) + _coord(2, 3, 1)), r"duplicate coordinate Order"),
        (_polygon(_coord(0, 1, 1), kind="Blob"), r"unknown Type='Blob'"),
        (_polygon('<Coordinate Order="0" Y="1" />' * 3), r"<Coordinate> has no X"),
    ],
    ids=["non-numeric", "nan", "inf", "two-vertices", "duplicate-order", "unknown-type", "no-x"],
)
def test_invalid_annotations_name_file_line_and_fix(tmp_path, body, expected):
    with pytest.raises(AnnotationError, match=expected) as info:
        read_annotations(_asap(tmp_path, body))
    assert "\n" not in str(info.value)


def test_missing_empty_truncated_and_foreign_files(tmp_path):
    with pytest.raises(AnnotationError, match="not found; check the path"):
        read_annotations(tmp_path / "missing.xml")
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    with pytest.raises(AnnotationError, match="empty.xml: the annotation file is empty"):
        read_annotations(empty)
    truncated = tmp_path / "truncated.xml"
    truncated.write_text((ASAP_HEAD + _polygon(_coord(0, 1, 1) * 3))[:-30])
    with pytest.raises(AnnotationError, match=r"truncated.xml:\d+: not well-formed XML"):
        read_annotations(truncated)
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<svg><rect/></svg>")
    with pytest.raises(AnnotationError, match=r"unknown annotation format \(XML root <svg>\)"):
        read_annotations(foreign)


def test_empty_annotation_list_is_valid(tmp_path):
    assert read_annotations(_asap(tmp_path, "")) == []


XXE = """<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Dot" PartOfGroup="None">
<Coordinates><Coordinate Order="0" X="1" Y="1" /></Coordinates></Annotation></Annotations></ASAP_Annotations>
"""
NETWORK = XXE.replace("file:///etc/passwd", "http://127.0.0.1:9/evil.dtd")
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">' for i in range(1, 10))
    + ']>\n<ASAP_Annotations><Annotations><Annotation Name="&lol9;" Type="Dot"><Coordinates>'
    '<Coordinate Order="0" X="1" Y="1" /></Coordinates></Annotation></Annotations></ASAP_Annotations>'
)


@pytest.mark.parametrize("text", [XXE, NETWORK, LAUGHS], ids=["xxe-file", "xxe-network", "billion-laughs"])
def test_hostile_xml_is_refused_quickly(tmp_path, text):
    path = tmp_path / "hostile.xml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(AnnotationError, match="declares entities"):
        read_annotations(path)
    assert time.perf_counter() - started < 1.0
