"""Curating a store after extraction: subsets by label, slide, annotation, quality or index
(``_subset``), arrays added along ``patch`` (``_added``) and TorchScript features (``_embed``)."""

from ._added import AddSummary, add_array
from ._subset import SubsetSummary, subset

__all__ = ["AddSummary", "SubsetSummary", "add_array", "subset"]
