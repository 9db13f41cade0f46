"""The patch codecs (``CODECS``: what the metadata declares and the encoder that writes each
patch), and the image codecs among them as Zarr v3 codecs (imagecodecs inside).

The image codecs are registered with zarr through the ``zarr.codecs`` entry points of this package, so any
zarr-python with wsizarr and imagecodecs installed reads such a store without importing wsizarr.
The codec names follow zarr's ``numcodecs.<id>`` convention with imagecodecs' own ids.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numcodecs
import numcodecs.abc
import numpy as np
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec
from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

from .._errors import ParameterError

__all__ = ["CODECS", "ImagecodecsJpeg", "ImagecodecsJpegXL", "encode_lossy", "imagecodecs_codec"]

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


@dataclass(frozen=True)
class _Codec:
    """A patch codec: what the metadata declares, and the encoder that writes each patch."""

    compressor: Callable[[], BytesBytesCodec | None]
    encoder: Callable[[], numcodecs.abc.Codec | None]
    serializer: Callable[[], ArrayBytesCodec] | None = None  # None: zarr's core "bytes"
    lossless: bool = True
    requires: tuple[str, ...] = ()  # packages a reader needs besides zarr


def _jpeg_serializer() -> ArrayBytesCodec:
    from ._codecs import ImagecodecsJpeg

    return ImagecodecsJpeg(level=_JPEG_QUALITY)


def _jpegxl_serializer() -> ArrayBytesCodec:
    from ._codecs import ImagecodecsJpegXL

    return ImagecodecsJpegXL(lossless=True, effort=1)


def _image_encoder(name: str, **config: Any) -> Callable[[], numcodecs.abc.Codec]:
    def make() -> numcodecs.abc.Codec:
        return imagecodecs_codec(name, **config)

    return make


_JPEG_QUALITY = 90
_IMAGE_REQUIRES = ("wsizarr", "imagecodecs")
CODECS: dict[str, _Codec] = {
    # level 1: on H&E about 1 % larger than level 3 but 2-3x faster to encode
    "zstd": _Codec(lambda: ZstdCodec(level=1), lambda: numcodecs.Zstd(level=1)),
    "blosc-lz4": _Codec(
        lambda: BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle, typesize=1),
        lambda: numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    ),
    "none": _Codec(lambda: None, lambda: None),
    "jpegxl": _Codec(
        lambda: None, _image_encoder("Jpegxl", lossless=True, effort=1),
        serializer=_jpegxl_serializer, requires=_IMAGE_REQUIRES,
    ),
    "jpeg": _Codec(
        lambda: None, _image_encoder("Jpeg", level=_JPEG_QUALITY),
        serializer=_jpeg_serializer, lossless=False, requires=_IMAGE_REQUIRES,
    ),
}



def encode_lossy(codec: str, pixels: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """``pixels`` (``(n, P, P, 3)`` uint8) encoded one patch a chunk by the lossy ``codec``
    (no checksums), and those chunks decoded: the pixels as the store will hold them.

    The quality measures are computed on these (what is stored, not what was read), and
    ``verify`` passes the slide's pixels through here to compare them with the stored ones:
    the encoder is deterministic, so the same pixels give the same chunk bytes and the same
    decoded pixels.
    """
    encoder = CODECS[codec].encoder()
    encoded = [bytes(encoder.encode(np.ascontiguousarray(patch))) for patch in pixels]
    decoded = np.empty_like(pixels)
    for chunk, out in zip(encoded, decoded):
        encoder.decode(chunk, out=out)
    return encoded, decoded
