"""ImageScope XML and QuPath GeoJSON, the real files, label maps, and generated files (hypothesis)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon
from shapely.validation import make_valid

from wsizarr import AnnotationError, ParameterError, WsizarrError, read_annotations
from wsizarr.annotations._files import read_annotation_file
from wsizarr.annotations._labels import apply_label_map, parse_label_map

from .conftest import ANNOTATIONS

# (file, format, annotations, labels) as the shared data README describes them
REAL = [
    ("wsipacker_example.xml", "asap", 1, {None}),
    ("wsiprocess_CMU-1_classification.xml", "asap", 5, {"malignant", "benign"}),
    ("wsiprocess_CMU-1_detection.xml", "asap", 24, {"malignant", "benign", "cell"}),
    ("wsiprocess_CMU-1_segmentation.xml", "asap", 4, {"malignant", "benign"}),
    ("WSI_handling_TCGA-EJ-5519-01Z-00-DX1.xml", "imagescope", 5, {"CaP", "layer 3", "layer 4"}),
    ("WSI_handling_TCGA-EJ-5519-01Z-00-DX1.json", "geojson", 5, {"Tumor", "Other", "Negative"}),
    ("dlup_qupath05.geojson", "geojson", 3, {"I", "UT"}),
]


@pytest.mark.parametrize(("name", "kind", "count", "labels"), REAL, ids=[r[0] for r in REAL])
def test_real_files_parse(name, kind, count, labels):
    result = read_annotation_file(ANNOTATIONS / name)
    assert result.format == kind and len(result.annotations) == count
    assert {a.label for a in result.annotations} == labels
    assert [a.id for a in result.annotations] == list(range(count))
    for annotation in result.annotations:
        assert np.isfinite(annotation.vertices).all()
        if annotation.type == "Polygon":
            assert Polygon(annotation.vertices, annotation.holes).is_valid


def test_imagescope_details():
    result = read_annotation_file(ANNOTATIONS / "WSI_handling_TCGA-EJ-5519-01Z-00-DX1.xml")
    assert result.mpp == pytest.approx(0.252)
    assert result.repaired == 2  # two of its three regions cross themselves
    assert sum(len(a.vertices) for a in result.annotations) > 3000


def test_imagescope_and_geojson_of_the_same_slide_give_the_same_polygons_and_labels():
    xml = read_annotation_file(ANNOTATIONS / "WSI_handling_TCGA-EJ-5519-01Z-00-DX1.xml")
    geojson = read_annotations(ANNOTATIONS / "WSI_handling_TCGA-EJ-5519-01Z-00-DX1.json")
    assert len(xml.annotations) == len(geojson) == 5
    # three layers with regions, three labels: the attribute CaP, then two unnamed layers whose
    # only attribute is ImageScope's empty default "Description", told apart by their Id
    assert {a.label for a in xml.annotations} == {"CaP", "layer 3", "layer 4"}
    assert xml.label_sources == {
        "CaP": "layer 1 attribute name", "layer 3": "layer 3 Id (no name, no attribute value)",
        "layer 4": "layer 4 Id (no name, no attribute value)",
    }
    unmatched = list(geojson)
    pairs = set()
    for a in xml.annotations:  # matched by position: the labels were renamed in QuPath
        b = min(unmatched, key=lambda b: np.abs(np.subtract(a.bbox, b.bbox)).sum())
        unmatched.remove(b)
        pairs.add((a.label, b.label))
        assert len(a.holes) == len(b.holes) == 0
        np.testing.assert_allclose(a.bbox, b.bbox, atol=0.01)  # the JSON rounds to 0.01 px
        # every vertex of each lies on the other's outline, up to that rounding (QuPath dropped
        # some collinear vertices, so the counts differ: 2528 vs 2130 on the largest)
        assert Polygon(a.vertices).hausdorff_distance(Polygon(b.vertices)) < 0.01
    assert not unmatched
    # one label of each file for one of the other: the same three classes, none merged
    assert pairs == {("CaP", "Tumor"), ("layer 3", "Negative"), ("layer 4", "Other")}


IMAGESCOPE = """<Annotations MicronsPerPixel="0.5">
<Annotation Id="1" Name="{name}"><Attributes><Attribute Name="Glom" Id="0" Value=""/></Attributes>
<Regions>
<Region Id="1" NegativeROA="0"><Vertices>{outer}</Vertices></Region>
<Region Id="2" NegativeROA="1"><Vertices>{hole}</Vertices></Region>
<Region Id="3" NegativeROA="0"><Vertices><Vertex X="500" Y="500"/></Vertices></Region>
</Regions></Annotation>
<Annotation Id="2" Name="Empty layer"><Regions/></Annotation>
</Annotations>"""


def _vertices(points):
    return "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in points)


def test_imagescope_holes_labels_and_empty_layers(tmp_path):
    path = tmp_path / "scope.xml"
    outer = [(0, 0), (100, 0), (100, 100), (0, 100)]
    hole = [(40, 40), (60, 40), (60, 60), (40, 60)]
    path.write_text(IMAGESCOPE.format(name="Tumour", outer=_vertices(outer), hole=_vertices(hole)))
    polygon, dot = read_annotations(path)
    assert polygon.label == "Tumour" and len(polygon.holes) == 1 and dot.type == "Dot"
    np.testing.assert_array_equal(polygon.holes[0], hole)
    with pytest.raises(ValueError):
        polygon.holes[0][0, 0] = 1  # read-only, like the vertices
    by_attribute = read_annotations(path, label_from="attribute")
    assert {a.label for a in by_attribute} == {"Glom"}
    path.write_text(IMAGESCOPE.format(name="", outer=_vertices(outer), hole=_vertices(hole)))
    assert {a.label for a in read_annotations(path)} == {"Glom"}  # unnamed layer: its attribute
    with pytest.raises(ParameterError, match="label_from must be 'name' or 'attribute'"):
        read_annotations(path, label_from="colour")


def _feature(geometry, **properties):
    return {"type": "Feature", "geometry": geometry, "properties": properties}


SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
HOLE = [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]


@pytest.mark.parametrize("layout", ["collection", "feature", "array"])
def test_geojson_layouts(tmp_path, layout):
    feature = _feature({"type": "Polygon", "coordinates": [SQUARE, HOLE]},
                       classification={"name": "Tumor", "color": [255, 0, 0]}, objectType="annotation")
    document = {"collection": {"type": "FeatureCollection", "features": [feature]},
                "feature": feature, "array": [feature]}[layout]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(document))
    (annotation,) = read_annotations(path)
    assert annotation.label == "Tumor" and annotation.vertices.shape == (4, 2)
    assert len(annotation.holes) == 1


def test_geojson_geometries_labels_and_detections(tmp_path):
    features = [
        _feature({"type": "MultiPolygon", "coordinates": [[SQUARE], [[[20, 20], [30, 20], [30, 30], [20, 20]]]]},
                 name="two parts", classification={"names": ["Tumor", "Grade 3"], "colorRGB": -3670016}),
        _feature({"type": "Point", "coordinates": [5, 5]}, name="cell", objectType="detection"),
        _feature({"type": "MultiPoint", "coordinates": [[1, 1], [2, 2]]}),
        _feature({"type": "Polygon", "coordinates": [SQUARE]}, name="just a name"),
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(features))
    annotations = read_annotations(path)
    assert [a.name for a in annotations] == ["two parts #1", "two parts #2", "cell", "Feature 2", "just a name"]
    assert annotations[0].label == "Tumor: Grade 3" and annotations[2].type == "Dot"
    assert annotations[3].type == "PointSet" and annotations[3].label is None
    assert annotations[4].label == "just a name"  # no classification: the name
    kept = read_annotations(path, exclude_detections=True)
    assert "cell" not in [a.name for a in kept] and len(kept) == 4
    old_layout = [{"type": "Feature", "id": "PathCellObject", "geometry": {"type": "Point", "coordinates": [1, 2]}}]
    path.write_text(json.dumps(old_layout))
    assert len(read_annotations(path)) == 1 and read_annotations(path, exclude_detections=True) == []


def test_self_intersecting_polygons_are_repaired_and_counted(tmp_path):
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    path = tmp_path / "bowtie.geojson"
    path.write_text(json.dumps(_feature({"type": "Polygon", "coordinates": [bowtie]}, name="bow")))
    result = read_annotation_file(path)
    assert result.repaired == 1 and len(result.annotations) == 2  # two triangles
    assert all(Polygon(a.vertices).is_valid for a in result.annotations)
    rectangle = tmp_path / "rectangle.xml"  # coordinates in the wrong order: a crossed rectangle
    rectangle.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="r" Type="Rectangle" PartOfGroup="x"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(bowtie[:4]))
        + "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    result = read_annotation_file(rectangle)
    assert result.repaired == 1 and [a.type for a in result.annotations] == ["Polygon", "Polygon"]
    assert [a.name for a in result.annotations] == ["r #1", "r #2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "FeatureCollection", "features": [', r"a.json:1:\d+: not valid JSON"),
        ('{"type": "Topology"}', "neither QuPath GeoJSON .* nor DSA annotation JSON"),
        ('[{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]',
         r"a.json: feature 0: a LineString outlines no area; nothing usable is left in the file \(1 skipped \(line 1\)\)"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}}]', "needs at least 3 coordinates"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "x"], [1, 0]]]}}]', "malformed Polygon coordinates"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, NaN], [1, 0]]]}}]', "not a finite number"),
        ('[{"type": "Feature"}]', "feature 0: it has no geometry; nothing usable"),
    ],
    ids=["truncated", "not-geojson", "linestring", "two-vertices", "non-numeric", "nan", "no-geometry"],
)
def test_broken_geojson(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert "\n" not in str(info.value) and "a.json" in str(info.value)


def test_hostile_imagescope_xml_is_refused(tmp_path):
    path = tmp_path / "scope.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                    '<Annotations><Annotation Name="&e;"/></Annotations>')
    started = time.perf_counter()
    with pytest.raises(AnnotationError, match="declares entities"):
        read_annotations(path)
    assert time.perf_counter() - started < 1


def test_label_maps(tmp_path):
    annotations = read_annotations(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml")
    mapping = parse_label_map("malignant=Abnormal, benign=Normal")
    assert mapping == {"malignant": "Abnormal", "benign": "Normal"}
    renamed = apply_label_map(annotations, mapping)
    assert {a.label for a in renamed} == {"Abnormal", "Normal", "cell"}
    assert [a.id for a in renamed] == [a.id for a in annotations]
    kept = apply_label_map(annotations, {"malignant": "tumour", "benign": "tumour"}, keep_only=True)
    assert {a.label for a in kept} == {"tumour"} and len(kept) < len(annotations)
    file = tmp_path / "map.json"
    file.write_text(json.dumps({"cell": "nucleus"}))
    assert parse_label_map(file) == {"cell": "nucleus"}
    with pytest.raises(AnnotationError, match="is not old=new"):
        parse_label_map("malignant")


NESTED_GROUPS = """<ASAP_Annotations><Annotations>
<Annotation Name="g1" Type="Dot" PartOfGroup="sclerotic"><Coordinates><Coordinate Order="0" X="1" Y="2"/></Coordinates></Annotation>
<Annotation Name="n" Type="PointSet" PartOfGroup="None"><Coordinates><Coordinate Order="0" X="1" Y="2"/><Coordinate Order="1" X="3" Y="4"/></Coordinates></Annotation>
</Annotations><AnnotationGroups>
<Group Name="glomerulus" PartOfGroup="None"/><Group Name="sclerotic" PartOfGroup="abnormal"/>
<Group Name="abnormal" PartOfGroup="glomerulus"/>
</AnnotationGroups></ASAP_Annotations>"""


def test_asap_nested_groups(tmp_path):
    path = tmp_path / "groups.xml"
    path.write_text(NESTED_GROUPS)
    result = read_annotation_file(path)
    dot, points = result.annotations
    assert dot.label == "sclerotic" and points.label is None and points.type == "PointSet"
    assert result.groups == {"glomerulus": None, "sclerotic": "abnormal", "abnormal": "glomerulus"}
    assert result.group_chain("sclerotic") == ("sclerotic", "abnormal", "glomerulus")
    assert result.group_chain("unlisted") == ("unlisted",)
    real = read_annotation_file(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml")
    assert real.groups == {"malignant": None, "benign": None, "cell": None}


def test_imagescope_negative_region_outside_every_region_is_an_exclusion(tmp_path):
    path = tmp_path / "scope.xml"
    outer = [(0, 0), (100, 0), (100, 100), (0, 100)]
    elsewhere = [(200, 200), (210, 200), (210, 210)]
    path.write_text(IMAGESCOPE.format(name="Tumour", outer=_vertices(outer), hole=_vertices(elsewhere)))
    result = read_annotation_file(path)
    assert result.mpp == 0.5 and [len(a.holes) for a in result.annotations] == [0, 0]
    (exclusion,) = result.exclusions
    assert exclusion.label == "Tumour" and exclusion.name == "layer 1 region 2"
    np.testing.assert_array_equal(exclusion.vertices, elsewhere)


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ('<Region Id="7"><Vertices><Vertex X="1" Y="abc"/></Vertices></Region>', r"scope.xml:3: layer 1 region 7: Y='abc' is not a finite number"),
        ('<Region Id="7"><Vertices><Vertex X="inf" Y="1"/></Vertices></Region>', r"X='inf' is not a finite number"),
        ('<Region Id="7"><Vertices><Vertex Y="1"/></Vertices></Region>', r"<Vertex> has no X"),
        ('<Region Id="7" NegativeROA="1"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="1"/></Vertices></Region>',
         r"scope.xml:3: layer 1 region 7: a negative region needs an area, found 2 vertices; nothing usable"),
        ('<Region Id="7"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="1"/><Vertex X="3" Y="1"/></Vertices></Region>',
         r"scope.xml:3: layer 1 region 7: it has no area \(its points are in a line or repeat\)"),
        ('<Region Id="7"><Vertices><Vertex X="1" Y="1"/>', r"scope.xml:\d+: not well-formed XML"),
    ],
    ids=["non-numeric", "inf", "no-x", "negative-two-vertices", "collinear", "truncated"],
)
def test_broken_imagescope(tmp_path, region, message):
    path = tmp_path / "scope.xml"
    path.write_text(f'<Annotations MicronsPerPixel="0.25">\n<Annotation Id="1" Name="T"><Regions>\n{region}\n</Regions></Annotation></Annotations>')
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert "\n" not in str(info.value)


def test_deeply_nested_or_non_utf8_json_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match="deep.json: not valid JSON"):
        read_annotations(path)
    path.write_bytes(b'[{"type": "\xff"}]')
    with pytest.raises(AnnotationError, match="deep.json: not valid JSON"):
        read_annotations(path)


def test_oversized_file_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr("wsizarr.annotations._files._MAX_BYTES", 10)
    path = tmp_path / "big.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(AnnotationError, match="big.geojson: 45 bytes is too large"):
        read_annotations(path)


def test_label_map_checks(tmp_path):
    annotations = read_annotations(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml")
    with pytest.raises(AnnotationError, match=r"'malignnat' is no annotation's label \(labels: benign, cell, malignant\)"):
        apply_label_map(annotations, {"malignnat": "tumour"}, strict=True)
    assert apply_label_map(annotations, {"malignnat": "tumour"}) == annotations  # another slide may have it
    order = ["tumour", "normal"]
    mapped = apply_label_map(annotations, {"malignant": "tumour", "benign": "normal"}, keep_only=True, order=order)
    assert {a.label for a in mapped} == {"tumour", "normal"}
    with pytest.raises(AnnotationError, match=r"labels 'cell' are not in it; add them"):
        apply_label_map(annotations, {"malignant": "tumour", "benign": "normal"}, order=order)
    with pytest.raises(AnnotationError, match="'a' is mapped twice"):
        parse_label_map("a=x, a=y")
    assert parse_label_map("x" * 5000 + "=y") == {"x" * 5000: "y"}
    broken = tmp_path / "map.json"
    broken.write_text('{"a": ')
    with pytest.raises(AnnotationError, match="map.json: cannot read the label map"):
        parse_label_map(broken)
    broken.write_text('{"a": 3}')
    with pytest.raises(AnnotationError, match="a label map is a JSON object"):
        parse_label_map(broken)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_hostile_imagescope_billion_laughs(tmp_path, encoding):
    path = tmp_path / "laughs.xml"
    entities = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    path.write_bytes(f'<?xml version="1.0" encoding="{encoding}"?><!DOCTYPE a [<!ENTITY l0 "lol">{entities}]>'
                     '<Annotations><Annotation Name="&l9;"/></Annotations>'.encode(encoding))
    started = time.perf_counter()
    with pytest.raises(AnnotationError, match="laughs.xml: the XML declares entities"):
        read_annotations(path)
    assert time.perf_counter() - started < 1


# --- property-based: generated files never raise anything but wsizarr's errors ----------------

coordinate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
ring = st.lists(st.tuples(coordinate, coordinate), min_size=3, max_size=12)
label = st.one_of(st.none(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8))


def _asap(rings, labels):
    body = "".join(
        f'<Annotation Name="a{i}" Type="Polygon" PartOfGroup="{lab or "None"}"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x!r}" Y="{y!r}" />' for k, (x, y) in enumerate(r))
        + "</Coordinates></Annotation>"
        for i, (r, lab) in enumerate(zip(rings, labels))
    )
    return f"<ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>"


def _geojson(rings, labels):
    return json.dumps({"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [[list(p) for p in r] + [list(r[0])]]},
                 **({"classification": {"name": lab}} if lab else {}))
        for r, lab in zip(rings, labels)
    ]})


def _dsa(rings, labels):
    return json.dumps([{"_id": f"doc{i}", "annotation": {"name": f"layer {i}", "elements": [
        {"type": "polyline", "closed": True, "points": [[x, y, 0] for x, y in r],
         **({"label": {"value": lab}} if lab else {})}]}} for i, (r, lab) in enumerate(zip(rings, labels))])


def _imagescope(rings, labels):
    return "<Annotations>" + "".join(
        f'<Annotation Id="{i}" Name="{lab or ""}"><Regions><Region Id="1"><Vertices>'
        + _vertices(r) + "</Vertices></Region></Regions></Annotation>"
        for i, (r, lab) in enumerate(zip(rings, labels))
    ) + "</Annotations>"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(ring, label), min_size=1, max_size=4), st.sampled_from([_asap, _geojson, _imagescope, _dsa]))
def test_valid_files_round_trip(tmp_path, shapes, writer):
    rings = [r for r, _ in shapes]
    labels = [lab for _, lab in shapes]
    with np.errstate(all="ignore"):
        assume(all(make_valid(Polygon(r)).area > 0 for r in rings))  # degenerate rings are refused
    path = tmp_path / "generated.txt"
    path.write_text(writer(rings, labels))
    result = read_annotation_file(path)
    if result.repaired == 0:  # a valid polygon comes back exactly
        assert len(result.annotations) == len(rings)
        for i, (annotation, r, lab) in enumerate(zip(result.annotations, rings, labels)):
            np.testing.assert_array_equal(annotation.vertices, np.array(r, dtype=float)[: len(annotation.vertices)])
            # an unnamed ImageScope layer is "layer <Id>"; an unlabelled DSA element takes its document's name
            assert annotation.label == (lab or (None if writer in (_asap, _geojson) else f"layer {i}"))
    for annotation in result.annotations:
        assert np.isfinite(annotation.vertices).all()


def _points_file(kinds_points, fmt):
    if fmt == "asap":
        return "<ASAP_Annotations><Annotations>" + "".join(
            f'<Annotation Name="p{i}" Type="{kind}" PartOfGroup="g"><Coordinates>'
            + "".join(f'<Coordinate Order="{k}" X="{x!r}" Y="{y!r}" />' for k, (x, y) in enumerate(pts))
            + "</Coordinates></Annotation>" for i, (kind, pts) in enumerate(kinds_points)
        ) + "</Annotations></ASAP_Annotations>"
    if fmt == "geojson":
        return json.dumps([
            _feature({"type": "Point", "coordinates": list(pts[0])} if kind == "Dot"
                     else {"type": "MultiPoint", "coordinates": [list(p) for p in pts]}, name="g")
            for kind, pts in kinds_points
        ])
    return '<Annotations><Annotation Id="1" Name="g"><Regions>' + "".join(
        f'<Region Id="{i}"><Vertices>{_vertices(pts)}</Vertices></Region>' for i, (_, pts) in enumerate(kinds_points)
    ) + "</Regions></Annotation></Annotations>"


points = st.one_of(
    st.tuples(st.just("Dot"), st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=1)),
    st.tuples(st.just("PointSet"), st.lists(st.tuples(coordinate, coordinate), min_size=2, max_size=2)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(points, min_size=1, max_size=4), st.sampled_from(["asap", "geojson", "imagescope"]))
def test_points_round_trip(tmp_path, kinds_points, fmt):
    path = tmp_path / "points.txt"
    path.write_text(_points_file(kinds_points, fmt))
    annotations = read_annotations(path)
    assert [(a.type, a.label) for a in annotations] == [(kind, "g") for kind, _ in kinds_points]
    for annotation, (_, pts) in zip(annotations, kinds_points):
        np.testing.assert_array_equal(annotation.vertices, np.array(pts, dtype=float))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_arbitrary_bytes_raise_only_wsizarr_errors(tmp_path, data):
    path = tmp_path / "junk.xml"
    path.write_bytes(data)
    try:
        read_annotations(path)
    except WsizarrError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(ring, label), min_size=1, max_size=3), st.sampled_from([_asap, _geojson, _imagescope, _dsa]),
       st.integers(0, 10_000), st.integers(1, 50))
def test_damaged_files_raise_only_wsizarr_errors(tmp_path, shapes, writer, cut, garbage):
    text = writer([r for r, _ in shapes], [lab for _, lab in shapes])
    damaged = text[: cut % max(len(text), 1)] + "\x00<&{[" * (garbage % 3) + text[cut % max(len(text), 1) + garbage:]
    path = tmp_path / "damaged.txt"
    path.write_text(damaged)
    try:
        read_annotations(path)
    except WsizarrError:
        pass
