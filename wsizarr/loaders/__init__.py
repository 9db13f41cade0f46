"""Reading a store for training: the patch table with selection and splits, the lazy xarray
dataset and shard-wise batches (``_patches``). The PyTorch datasets are ``wsizarr.torch``."""

from ._patches import PatchTable, iter_batches, open_dataset, read_patch_table

__all__ = ["PatchTable", "iter_batches", "open_dataset", "read_patch_table"]
