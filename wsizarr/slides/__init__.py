"""Stage 2, slides: geometry and resolution (``_slide``: OpenSlide's view, levels, mpp), the
TIFF tiles reader and the reader choice (``_tiles``), ICC colour (``_color``) and the demo
slide generator (``_demo``)."""

from ._demo import DemoSlide, write_demo_annotations, write_demo_slide
from ._slide import ResolutionOptions, SlideInfo

__all__ = ["DemoSlide", "ResolutionOptions", "SlideInfo", "write_demo_annotations", "write_demo_slide"]
