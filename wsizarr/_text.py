"""Counts written for a person: ``count(1, "slide")`` is "1 slide", ``count(2, "slide")`` "2 slides"."""

from __future__ import annotations

__all__ = ["count", "plural"]

_ES = ("s", "x", "z", "ch", "sh")
_IRREGULAR = {"vertex": "vertices"}


def plural(noun: str) -> str:
    """The plural of ``noun``, a noun or a phrase ending in one ("edge patch": "edge patches")."""
    head, _, last = noun.rpartition(" ")
    many = _IRREGULAR.get(last) or (last + "es" if last.endswith(_ES) else last + "s")
    return f"{head} {many}" if head else many


def count(n: int, noun: str, many: str | None = None) -> str:
    """``n`` and ``noun`` agreeing: "1 patch", "0 patches", "3 patches" (``many``: the plural,
    when ``plural`` does not know it)."""
    return f"{n} {noun if n == 1 else many or plural(noun)}"
