"""Stage 1, annotation files -> ``Annotation`` records (level-0 pixels): one reader
(``_files``) in front of a module per format (``_asap``, ``_imagescope``, ``_geojson``,
``_dsa``), the records and the builder they fill (``_records``), label maps (``_labels``) and
the polygon geometry the later stages share (``_geometry``)."""

from ._files import read_annotation_file, read_annotations
from ._labels import apply_label_map, parse_label_map
from ._records import Annotation, AnnotationFile

__all__ = ["Annotation", "AnnotationFile", "apply_label_map", "parse_label_map", "read_annotation_file", "read_annotations"]
