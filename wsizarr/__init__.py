"""wsizarr: annotation-driven patch extraction from whole-slide images into one Zarr v3 store."""

from __future__ import annotations

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
from ._pipeline import extract, run_extraction
from ._version import __version__
from .annotations import (
    Annotation,
    AnnotationFile,
    apply_label_map,
    parse_label_map,
    read_annotation_file,
    read_annotations,
)
from .curate import AddSummary, Encoder, SubsetSummary, add_array, embed, subset
from .extraction import (
    ExecutionOptions,
    ExtractionSummary,
    ExtractOptions,
    FilterOptions,
    LabelOptions,
    LayoutOptions,
    PatchPlan,
    ResolutionOptions,
    SamplingOptions,
    TilingOptions,
    measure_patches,
    plan_jitter,
)
from .inspect import VerifyReport, export, overlay, preview, verify, write_report
from .loaders import PatchTable, iter_batches, open_dataset, read_patch_table
from .slides import DemoSlide, SlideInfo, write_demo_annotations, write_demo_slide
from .store import QUALITY_MEASURES, SCHEMA_VERSION, migrate, store_info

__all__ = [
    "SCHEMA_VERSION",
    "AddSummary",
    "Annotation",
    "AnnotationError",
    "AnnotationFile",
    "CorruptStoreError",
    "DemoSlide",
    "Encoder",
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
    "TilingOptions",
    "VerifyReport",
    "WsizarrError",
    "__version__",
    "add_array",
    "apply_label_map",
    "embed",
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
