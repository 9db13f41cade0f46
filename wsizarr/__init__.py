"""wsizarr: annotation-driven patch extraction from whole-slide images into one Zarr v3 store."""

from __future__ import annotations

from ._added import AddSummary, add_array
from ._annotations import (
    Annotation,
    AnnotationFile,
    apply_label_map,
    parse_label_map,
    read_annotation_file,
    read_annotations,
)
from ._demo import DemoSlide, write_demo_annotations, write_demo_slide
from ._errors import (
    AnnotationError,
    CorruptStoreError,
    IncompleteStoreError,
    ParameterError,
    SlideError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    WsizarrError,
)
from ._export import export
from ._extract import ExtractionSummary, extract, run_extraction
from ._loaders import PatchTable, iter_batches, open_dataset, read_patch_table
from ._migrate import migrate
from ._options import (
    ExecutionOptions,
    ExtractOptions,
    FilterOptions,
    LabelOptions,
    LayoutOptions,
    ResolutionOptions,
    SamplingOptions,
)
from ._quality import QUALITY_MEASURES, measure_patches
from ._preview import overlay, preview, write_report
from ._sampling import PatchPlan, plan_jitter
from ._slide import SlideInfo
from ._manifest import SCHEMA_VERSION
from ._store import store_info
from ._subset import SubsetSummary, subset
from ._verify import VerifyReport, verify
from ._version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "AddSummary",
    "Annotation",
    "AnnotationError",
    "AnnotationFile",
    "CorruptStoreError",
    "DemoSlide",
    "ExecutionOptions",
    "ExtractOptions",
    "ExtractionSummary",
    "FilterOptions",
    "IncompleteStoreError",
    "LabelOptions",
    "LayoutOptions",
    "ParameterError",
    "PatchPlan",
    "QUALITY_MEASURES",
    "PatchTable",
    "ResolutionOptions",
    "SamplingOptions",
    "SlideError",
    "SlideInfo",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "SubsetSummary",
    "VerifyReport",
    "WsizarrError",
    "__version__",
    "add_array",
    "apply_label_map",
    "export",
    "extract",
    "iter_batches",
    "measure_patches",
    "migrate",
    "open_dataset",
    "overlay",
    "parse_label_map",
    "plan_jitter",
    "preview",
    "read_annotation_file",
    "read_annotations",
    "read_patch_table",
    "run_extraction",
    "store_info",
    "subset",
    "verify",
    "write_demo_annotations",
    "write_demo_slide",
    "write_report",
]
