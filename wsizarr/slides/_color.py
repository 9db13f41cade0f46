"""Colour: a slide's ICC profile as the store records it, and its pixels converted to sRGB.

The profile is the one the slide embeds for its main image (OpenSlide 4 reports it for Aperio,
generic TIFF and other formats; for slides on S3 it is TIFF tag 34675, InterColorProfile, of
level 0). With ``color="srgb"`` a shard task converts each slide's pixels, as read and before
any resize, from that profile to sRGB with LittleCMS (Pillow's ``ImageCms``); a slide without a
profile is left unchanged, and its row of the slide table says so (:func:`applied_color`).
"""

from __future__ import annotations

import functools
import hashlib
import io

import numpy as np
from PIL import Image, ImageCms

from .._errors import SlideError, option

__all__ = ["COLORS", "applied_color", "profile_description", "profile_sha256", "to_srgb"]

COLORS = ("unchanged", "srgb")


def profile_description(profile: bytes | None) -> str:
    """The profile's description (its ``desc`` tag); "" without a profile or when LittleCMS
    cannot read it (its bytes and SHA-256 are recorded all the same)."""
    if profile is None:
        return ""
    try:
        return _open(profile).profile.profile_description or ""
    except OSError:
        return ""


def profile_sha256(profile: bytes | None) -> str:
    """SHA-256 of the profile's bytes, "" without a profile."""
    return "" if profile is None else hashlib.sha256(profile).hexdigest()


def applied_color(color: str, profile: bytes | None) -> str:
    """What the ``color`` option does to a slide's pixels: ``srgb`` (converted from its
    profile) or ``unchanged`` (asked for, or the slide has no profile to convert from)."""
    return "srgb" if color == "srgb" and profile is not None else "unchanged"


def _open(profile: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(profile))


@functools.lru_cache(maxsize=16)
def _transform(profile: bytes) -> ImageCms.ImageCmsTransform:
    """The transform from ``profile`` to sRGB, built once per profile in each process (a
    transform cannot be pickled); ``NOCACHE`` makes one transform safe to share between threads
    (LittleCMS's one-pixel cache is not synchronised). Rendering intent: the profile's own,
    else perceptual."""
    source = _open(profile)
    intent = ImageCms.Intent.PERCEPTUAL
    if source.profile.rendering_intent in set(ImageCms.Intent) and ImageCms.isIntentSupported(
        source, source.profile.rendering_intent, ImageCms.Direction.INPUT,
    ):
        intent = ImageCms.Intent(source.profile.rendering_intent)
    return ImageCms.buildTransform(
        source, ImageCms.createProfile("sRGB"), "RGB", "RGB", intent, flags=ImageCms.Flags.NOCACHE,
    )


def to_srgb(pixels: np.ndarray, profile: bytes, name: str) -> None:
    """Convert ``(..., H, W, 3)`` uint8 ``pixels`` from ``profile`` to sRGB, in place;
    ``SlideError`` naming slide ``name`` when LittleCMS cannot use its profile."""
    try:
        transform = _transform(profile)
    except (OSError, ImageCms.PyCMSError, ValueError) as exc:
        raise SlideError(
            f"{name}: its ICC colour profile cannot be used ({exc}); extract it with "
            f"{option('color', 'unchanged')}"
        ) from None
    width = pixels.shape[-2]
    image = Image.fromarray(np.ascontiguousarray(pixels).reshape(-1, width, 3))
    ImageCms.applyTransform(image, transform, inPlace=True)
    pixels[...] = np.asarray(image).reshape(pixels.shape)
