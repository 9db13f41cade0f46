"""Optional image codecs for the ``patches`` array, as Zarr v3 codecs (imagecodecs inside).

They are registered with zarr through the ``zarr.codecs`` entry points of this package, so any
zarr-python with wsizarr and imagecodecs installed reads such a store without importing wsizarr.
The codec names follow zarr's ``numcodecs.<id>`` convention with imagecodecs' own ids.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any

from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

from ._errors import ParameterError

__all__ = ["ImagecodecsJpeg", "ImagecodecsJpegXL", "imagecodecs_codec"]

_INSTALL_HINT = "reinstall wsizarr, which requires imagecodecs"


def imagecodecs_codec(name: str, **config: Any) -> Any:
    """The imagecodecs numcodecs codec ``name`` (``Jpeg``, ``Jpegxl``); ``ParameterError`` if absent."""
    try:
        import imagecodecs
        import imagecodecs.numcodecs as image_numcodecs
    except ImportError:
        raise ParameterError(f"the {name} codec needs imagecodecs: {_INSTALL_HINT}") from None
    if not getattr(imagecodecs, name.upper() if name != "Jpeg" else "JPEG8").available:
        raise ParameterError(f"this imagecodecs build has no {name} support; reinstall imagecodecs")
    return getattr(image_numcodecs, name)(**config)


class _ImagecodecsCodec(_NumcodecsArrayBytesCodec):
    _imagecodecs_name = ""

    def __init__(self, **codec_config: Any) -> None:
        with warnings.catch_warnings():
            # the base class warns that numcodecs codecs are outside the Zarr v3 spec: we know
            warnings.simplefilter("ignore")
            super().__init__(**codec_config)

    @cached_property
    def _codec(self) -> Any:
        config = {k: v for k, v in self.codec_config.items() if k != "id"}
        return imagecodecs_codec(self._imagecodecs_name, **config)


class ImagecodecsJpeg(_ImagecodecsCodec, codec_name="imagecodecs_jpeg"):
    """Baseline JPEG (lossy at ``level`` quality) of one RGB patch per chunk."""

    _imagecodecs_name = "Jpeg"


class ImagecodecsJpegXL(_ImagecodecsCodec, codec_name="imagecodecs_jpegxl"):
    """JPEG XL of one RGB patch per chunk (lossless with ``lossless=True``)."""

    _imagecodecs_name = "Jpegxl"
