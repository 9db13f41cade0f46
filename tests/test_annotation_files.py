"""Annotation files as people and tools write them (issue 15): ImageScope layers and region
types, mostly-degenerate files, DSA / HistomicsUI JSON, string classifications, UTF-16 and BOM
JSON, lines and collections, CAMELYON-style exclusions, and ``describe``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from wsizarr import AnnotationError, read_annotation_file, read_annotations
from wsizarr.annotations._files import describe, format_description
from wsizarr.annotations._labels import apply_label_map

from .conftest import ANNOTATIONS


def _vertices(points) -> str:
    return "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in points)


def _region(region_id, points, kind=0, negative=0) -> str:
    return (
        f'<Region Id="{region_id}" Type="{kind}" Zoom="0.5" Text="" NegativeROA="{negative}" '
        f'InputRegionId="0" Analyze="1" DisplayId="{region_id}"><Attributes/>'
        f"<Vertices>{_vertices(points)}</Vertices></Region>"
    )


def _layer(layer_id, regions, name="", attributes='<Attribute Name="Description" Id="0" Value=""/>') -> str:
    return (
        f'<Annotation Id="{layer_id}" Name="{name}" ReadOnly="0" Type="4" LineColor="65280" Visible="1">'
        f"<Attributes>{attributes}</Attributes><Regions>"
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
        "</RegionAttributeHeaders>" + "".join(regions) + "</Regions><Plots/></Annotation>"
    )


def _imagescope(tmp_path, *layers, name="scope.xml"):
    path = tmp_path / name
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<Annotations MicronsPerPixel="0.25">\n'
                    + "\n".join(layers) + "\n</Annotations>\n")
    return path


SQUARE = [(0, 0), (100, 0), (100, 100), (0, 100)]


def _square(x, y, side=100):
    return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]


def test_imagescope_layers_stay_distinct_and_say_where_their_labels_come_from(tmp_path):
    path = _imagescope(
        tmp_path,
        _layer(1, [_region(1, _square(0, 0))], name="Tumour"),  # named
        _layer(2, [_region(1, _square(200, 0))]),  # ImageScope's default attribute only
        _layer(3, [_region(1, _square(400, 0)), _region(2, _square(600, 0))]),  # likewise
        _layer(4, [_region(1, _square(800, 0))], attributes=(
            '<Attribute Name="Description" Id="0" Value=""/><Attribute Name="Note" Id="1" Value="stroma"/>')),
        _layer(5, [_region(1, _square(1000, 0))], attributes='<Attribute Name="CaP" Id="0" Value=""/>'),
        _layer(6, [_region(1, _square(1200, 0))], attributes=""),  # no attributes at all
        _layer(7, []),  # no regions
    )
    result = read_annotation_file(path)
    assert [a.label for a in result.annotations] == ["Tumour", "layer 2", "layer 3", "layer 3", "stroma", "CaP", "layer 6"]
    assert result.label_sources == {
        "Tumour": "layer 1 name",
        "layer 2": "layer 2 Id (no name, no attribute value)",
        "layer 3": "layer 3 Id (no name, no attribute value)",
        "stroma": "layer 4 attribute 'Note' value",
        "CaP": "layer 5 attribute name",
        "layer 6": "layer 6 Id (no name, no attribute value)",
    }
    assert result.warnings == ()  # nothing merged
    merged = apply_label_map(result.annotations, {"layer 2": "tumor", "layer 3": "tumor"})
    assert [a.label for a in merged][:4] == ["Tumour", "tumor", "tumor", "tumor"]


def test_imagescope_layers_sharing_a_name_are_merged_with_a_warning(tmp_path):
    path = _imagescope(
        tmp_path, _layer(1, [_region(1, SQUARE)], name="Tumour"), _layer(2, [_region(1, _square(200, 0))], name="Tumour")
    )
    result = read_annotation_file(path)
    assert {a.label for a in result.annotations} == {"Tumour"}
    assert result.warnings == ("layers 1, 2 share the label 'Tumour' (merged)",)


def test_imagescope_region_types_are_read_as_drawn(tmp_path):
    path = _imagescope(tmp_path, _layer(1, [
        _region(1, [(10, 10), (60, 10), (40, 50)], kind=0),  # freehand
        _region(2, _square(100, 0), kind=1),  # rectangle, four corners
        _region(3, [(300, 0), (400, 50)], kind=1),  # rectangle, two corners
        _region(4, [(500, 100), (700, 200)], kind=2),  # ellipse: its bounding box
        _region(5, [(800, 80), (900, 90)], kind=3),  # arrow: head first
        _region(6, [(0, 500), (300, 500)], kind=4),  # ruler
        _region(7, [(0, 600), (50, 600), (50, 650)], kind=9),  # unknown type
        _region(8, [(1000, 1000)], kind=0),  # a single click
    ], name="shapes"))
    result = read_annotation_file(path)
    kinds = {a.name: a.type for a in result.annotations}
    assert kinds == {
        "layer 1 region 1": "Polygon", "layer 1 region 2": "Rectangle", "layer 1 region 3": "Rectangle",
        "layer 1 region 4": "Polygon", "layer 1 region 5": "Dot", "layer 1 region 7": "Polygon",
        "layer 1 region 8": "Dot",
    }
    by_name = {a.name: a for a in result.annotations}
    np.testing.assert_array_equal(by_name["layer 1 region 3"].vertices, [(300, 0), (400, 0), (400, 50), (300, 50)])
    ellipse = by_name["layer 1 region 4"]
    assert ellipse.bbox == pytest.approx((500, 100, 700, 200))
    assert Polygon(ellipse.vertices).area == pytest.approx(math.pi * 100 * 50, rel=0.01)
    np.testing.assert_array_equal(by_name["layer 1 region 5"].vertices, [(800, 80)])
    assert [(s.where, s.reason) for s in result.skipped] == [("3: layer 1 region 6", "line")]
    assert len(result.warnings) == 2
    assert "layer 1 region 5: an arrow (Type 3), read as a Dot at its head" in result.warnings[0]
    assert "layer 1 region 7: region Type 9 is not a shape wsizarr knows" in result.warnings[1]


def test_a_file_of_mostly_degenerate_regions_keeps_the_rest(tmp_path):
    regions = []
    for k in range(400):
        x = 200 * k
        if k % 3 == 0:
            points = _square(x, 0)
        elif k % 3 == 1:
            points = [(x, 0), (x + 50, 50), (x + 100, 100)]  # a line drawn as a polygon
        else:
            points = [(x, 0)] * 4  # one point clicked four times
        regions.append(_region(k + 1, points))
    path = _imagescope(tmp_path, _layer(1, regions, name="glom"))
    result = read_annotation_file(path)
    assert len(result.annotations) == 134 and len(result.skipped) == 266
    assert {s.reason for s in result.skipped} == {"no area"}
    assert result.skipped[0].where == "3: layer 1 region 2"
    assert describe(result, path)["skipped"] == {"no area": 266}
    with pytest.raises(AnnotationError, match=r"scope.xml:3: layer 1 region 2: it has no area .*without strict_annotations=True") as info:
        read_annotation_file(path, strict=True)
    assert "\n" not in str(info.value)
    nothing = _imagescope(tmp_path, _layer(1, [_region(1, [(0, 0), (5, 5), (9, 9)]), _region(2, [(1, 1)] * 3)]), name="none.xml")
    with pytest.raises(AnnotationError, match=r"none.xml:3: layer 1 region 1: it has no area .*nothing usable is left in the file \(2 skipped \(no area 2\)\)"):
        read_annotation_file(nothing)


def _element(kind, **fields):
    return {"type": kind, "lineColor": "rgb(0,0,0)", "lineWidth": 2, **fields}


DSA_ELEMENTS = [
    _element("polyline", closed=True, points=[[0, 0, 0], [100, 0, 0], [100, 100, 0], [0, 100, 0]],
             holes=[[[40, 40, 0], [60, 40, 0], [60, 60, 0], [40, 60, 0]]], label={"value": "tumor"}, group="ignored"),
    _element("polyline", closed=False, points=[[0, 0, 0], [50, 50, 0], [90, 10, 0]], group="margin"),
    _element("rectangle", center=[500, 500, 0], width=200, height=100, rotation=math.pi / 2, group="roi"),
    _element("ellipse", center=[1000, 1000, 0], width=200, height=100, rotation=0),
    _element("circle", center=[2000, 2000, 0], radius=50, label={"value": ""}, group="nucleus"),
    _element("point", center=[3000, 3000, 0], label={"value": "mitosis"}),
    _element("arrow", points=[[0, 0, 0], [10, 10, 0]]),
]


def test_dsa_documents_with_every_element_type(tmp_path):
    # the layout the Digital Slide Archive's REST API returns: a list of documents
    documents = [
        {"_id": "5d633c49", "_modelType": "annotation", "_version": 1,
         "annotation": {"name": "first pass", "description": "", "elements": DSA_ELEMENTS[:4]},
         "groups": ["tumor"], "itemId": "5d5d6910", "_elementQuery": {"count": 4}},
        {"_id": "5d633c4a", "annotation": {"name": "cells", "elements": DSA_ELEMENTS[4:]}},
    ]
    path = tmp_path / "slide.json"
    path.write_text(json.dumps(documents))
    result = read_annotation_file(path)
    assert result.format == "dsa"
    polygon, rectangle, ellipse, circle, point = result.annotations
    assert (polygon.type, polygon.label, len(polygon.holes)) == ("Polygon", "tumor", 1)
    assert rectangle.type == "Rectangle" and rectangle.label == "roi"
    # rotated a quarter turn about its centre: 100 wide, 200 high
    assert rectangle.bbox == pytest.approx((450, 400, 550, 600))
    assert Polygon(rectangle.vertices).area == pytest.approx(200 * 100)
    assert ellipse.label == "first pass"  # no label, no group: the document's name
    assert Polygon(ellipse.vertices).area == pytest.approx(math.pi * 100 * 50, rel=0.01)
    assert circle.label == "nucleus" and circle.bbox == pytest.approx((1950, 1950, 2050, 2050))
    assert point.type == "Dot" and point.label == "mitosis"
    np.testing.assert_array_equal(point.vertices, [(3000, 3000)])
    assert [(s.where, s.reason) for s in result.skipped] == [
        ("document 0 element 1", "line"), ("document 1 element 2", "unsupported element 'arrow'"),
    ]
    assert result.label_sources == {
        "tumor": "label.value", "roi": "group", "first pass": "document name", "nucleus": "group",
        "mitosis": "label.value",
    }


@pytest.mark.parametrize("layout", ["document", "annotation", "list"])
def test_dsa_layouts(tmp_path, layout):
    body = {"name": "glomeruli", "elements": [DSA_ELEMENTS[3]]}
    document = {"document": {"_id": "x", "annotation": body}, "annotation": body, "list": [body, body]}[layout]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(document))
    annotations = read_annotations(path)
    assert len(annotations) == (2 if layout == "list" else 1)
    assert {a.label for a in annotations} == {"glomeruli"}


def test_dsa_malformed_element_is_one_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"elements": [_element("rectangle", center=[1, 2], width="wide", height=3)]}))
    with pytest.raises(AnnotationError, match=r"a.json: document 0 element 0: malformed rectangle coordinates"):
        read_annotations(path)


def _feature(geometry, **properties):
    return {"type": "Feature", "geometry": geometry, "properties": properties}


SQUARE_RING = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


@pytest.mark.parametrize(
    ("classification", "label"),
    [
        ("{'name': 'Tumor', 'color': [200, 0, 0]}", "Tumor"),  # pandas / geopandas wrote a dict repr
        ('{"name": "Stroma", "colorRGB": -3670016}', "Stroma"),  # or JSON
        ("{'names': ['Tumor', 'Grade 3']}", "Tumor: Grade 3"),
        ("Immune cells", "Immune cells"),  # or the class name itself
        ("{'name': broken", None),  # neither: no label rather than a wrong one
        ("{'name': __import__('os').getcwd()}", None),  # never evaluated
    ],
)
def test_geojson_classification_stored_as_a_string(tmp_path, classification, label):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([_feature({"type": "Polygon", "coordinates": [SQUARE_RING]}, classification=classification)]))
    result = read_annotation_file(path)
    assert [a.label for a in result.annotations] == [label]
    if label is not None:
        assert result.label_sources == {label: "classification (a string)"}


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_json_with_a_byte_order_mark_or_in_utf16(tmp_path, encoding):
    collection = {"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [SQUARE_RING]}, classification={"name": "Tumör"})]}
    path = tmp_path / "a.geojson"
    path.write_bytes(json.dumps(collection, ensure_ascii=False).encode(encoding))
    (annotation,) = read_annotations(path)
    assert annotation.label == "Tumör"
    dsa = tmp_path / "dsa.json"
    dsa.write_bytes(json.dumps({"elements": [DSA_ELEMENTS[5]]}).encode(encoding))
    assert read_annotation_file(dsa).format == "dsa"


def test_utf16_imagescope_xml(tmp_path):
    path = tmp_path / "scope.xml"
    text = '<?xml version="1.0" encoding="UTF-16"?>\n<Annotations>' + _layer(1, [_region(1, SQUARE)], name="Tumör") + "</Annotations>"
    path.write_bytes(text.encode("utf-16"))
    (annotation,) = read_annotations(path)
    assert annotation.label == "Tumör"


def test_geojson_lines_collections_and_missing_geometry_are_never_fatal(tmp_path):
    features = [
        _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, name="a line"),
        _feature({"type": "MultiLineString", "coordinates": [[[0, 0], [5, 5]]]}),
        _feature(None, name="no geometry"),
        _feature({"type": "GeometryCollection", "geometries": [
            {"type": "Polygon", "coordinates": [SQUARE_RING]}, {"type": "Point", "coordinates": [50, 50]},
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}]}, name="mixed", classification={"name": "T"}),
        _feature({"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [9, 9], [0, 0]]]}),  # no area
        _feature({"type": "Curve", "coordinates": []}),
    ]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(features))
    result = read_annotation_file(path)
    assert [(a.name, a.type, a.label) for a in result.annotations] == [
        ("mixed #1", "Polygon", "T"), ("mixed #2", "Dot", "T"),
    ]
    assert [(s.where, s.reason) for s in result.skipped] == [
        ("feature 0", "line"), ("feature 1", "line"), ("feature 2", "no geometry"),
        ("feature 3 part 2", "line"), ("feature 4", "no area"), ("feature 5", "unsupported geometry 'Curve'"),
    ]


CAMELYON = """<?xml version="1.0"?>
<ASAP_Annotations>
<Annotations>
<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>{tumour}</Coordinates></Annotation>
<Annotation Name="Annotation 1" Type="Spline" PartOfGroup="_1" Color="#F4FA58"><Coordinates>{other}</Coordinates></Annotation>
<Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E"><Coordinates>{hole}</Coordinates></Annotation>
</Annotations>
<AnnotationGroups>
<Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
<Group Name="_1" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
<Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
</AnnotationGroups>
</ASAP_Annotations>
"""


def _coordinates(points) -> str:
    return "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(points))


def write_camelyon(path, tumour=_square(1000, 1000, 2000), other=_square(4000, 1000, 500), hole=_square(1500, 1500, 800)):
    """A CAMELYON16-style ASAP file: tumour in groups _0 and _1, a region to exclude in _2."""
    path.write_text(CAMELYON.format(tumour=_coordinates(tumour), other=_coordinates(other), hole=_coordinates(hole)))
    return path


def test_camelyon_exclusion_group(tmp_path):
    path = write_camelyon(tmp_path / "tumor_001.xml")
    plain = read_annotation_file(path)
    assert [a.label for a in plain.annotations] == ["_0", "_1", "_2"] and plain.exclusions == ()
    result = read_annotation_file(path, exclude_labels=["_2", "Background"])
    assert [a.label for a in result.annotations] == ["_0", "_1"] and [a.id for a in result.annotations] == [0, 1]
    (exclusion,) = result.exclusions
    assert exclusion.label == "_2" and exclusion.name == "Annotation 2"
    assert result.warnings == ("no annotation is labelled 'Background', so none is excluded by it",)
    assert "_2" not in result.label_sources


def test_describe_and_its_text(tmp_path):
    path = _imagescope(tmp_path, _layer(1, [
        _region(1, SQUARE), _region(2, _square(20, 20, 10), negative=1), _region(3, _square(5000, 5000), negative=1),
        _region(4, _square(9000, 0)), _region(5, [(0, 0), (9, 9)], kind=4),
    ], attributes='<Attribute Name="Glom" Id="0" Value=""/>'))
    description = describe(read_annotation_file(path), path, slide_dimensions=(8000, 8000))
    assert description == {
        "file": str(path), "format": "imagescope", "annotations": 2,
        "labels": [{"label": "Glom", "count": 2, "types": {"Polygon": 2}, "source": "layer 1 attribute name"}],
        "repaired": 0, "skipped": {"line": 1}, "skipped_at": ["3: layer 1 region 5 (line)"],
        "exclusions": 1, "outside_slide": 1, "warnings": [],
    }
    text = format_description(description)
    assert text.splitlines()[0] == f"{path}: Aperio ImageScope XML, 2 annotations, 1 label"
    assert "Glom      2  Polygon 2  from layer 1 attribute name" in text
    assert "repaired 0, skipped 1 (line 1), exclusions 1, outside the slide 1" in text


def test_real_asap_dot_with_four_coordinates_is_a_point_set():
    result = read_annotation_file(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml")
    (point_set,) = [a for a in result.annotations if a.label == "cell"]
    assert point_set.type == "PointSet" and point_set.vertices.shape == (4, 2)


def test_asap_measurement_is_a_line_and_the_rest_is_kept(tmp_path):
    # the structure of ASAP's own files: a Dot, a Rectangle, a Polygon, a Spline and a ruler
    shapes = [("Dot", [(10, 10)]), ("Rectangle", _square(100, 100)), ("Polygon", [(300, 0), (400, 50), (350, 90)]),
              ("Spline", [(500, 0), (600, 50), (550, 90)]), ("Measurement", [(0, 500), (300, 520)])]
    body = "".join(
        f'<Annotation Name="Annotation {k}" Type="{kind}" PartOfGroup="None" Color="#F4FA58">'
        f"<Coordinates>{_coordinates(points)}</Coordinates></Annotation>\n" for k, (kind, points) in enumerate(shapes)
    )
    path = tmp_path / "asap.xml"
    path.write_text(f'<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n{body}</Annotations>\n'
                    "<AnnotationGroups />\n</ASAP_Annotations>\n")
    result = read_annotation_file(path)
    assert [a.type for a in result.annotations] == ["Dot", "Rectangle", "Polygon", "Spline"]
    assert [(s.where, s.reason) for s in result.skipped] == [("8: annotation 'Annotation 4'", "line")]


def test_a_bare_geojson_geometry_is_one_unnamed_feature(tmp_path):
    # QuPath's own test data holds a MultiPolygon written without a Feature around it
    path = tmp_path / "polygon.geojson"
    path.write_text(json.dumps({"type": "MultiPolygon", "coordinates": [[SQUARE_RING], [[[20, 20], [30, 20], [30, 30], [20, 20]]]]}))
    result = read_annotation_file(path)
    assert [(a.name, a.type, a.label) for a in result.annotations] == [
        ("Feature 0 #1", "Polygon", None), ("Feature 0 #2", "Polygon", None),
    ]
