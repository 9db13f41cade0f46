"""Stage 4, extraction: the option records (``_options``), sampling a plan from annotations and
slide geometry (``_sampling``), tiling whole slides (``_tiling``), preparing and planning slides
(``_planning``), deciding where a run builds and what it still owes (``_runplan``), the tasks and their runner (``_execution``),
the quality measures (``_quality``) and the pipeline that runs them (``_run``). Quality filters
are applied above this stage (``wsizarr._pipeline``)."""

from ._options import (
    ExecutionOptions,
    ExtractOptions,
    FilterOptions,
    LabelOptions,
    LayoutOptions,
    ResolutionOptions,
    SamplingOptions,
    TilingOptions,
)
from ._quality import measure_patches
from ._run import ExtractionSummary, extract_unfiltered
from ._sampling import PatchPlan, plan_jitter

__all__ = [
    "ExecutionOptions", "ExtractOptions", "ExtractionSummary", "FilterOptions", "LabelOptions", "LayoutOptions",
    "PatchPlan", "ResolutionOptions", "SamplingOptions", "TilingOptions", "extract_unfiltered", "measure_patches",
    "plan_jitter",
]
