"""Curating a store after extraction: subsets by label, slide, annotation, quality or index
(``_subset``), arrays added along ``patch`` (``_added``) and encoders' features (``_embed``)."""

from ._added import AddSummary, add_array
from ._embed import Encoder, embed
from ._subset import SubsetSummary, subset

__all__ = ["AddSummary", "Encoder", "SubsetSummary", "add_array", "embed", "subset"]
