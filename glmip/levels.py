"""Mip chain geometry shared by the GPU pyramid and its reference: level sizes and filter widths.

Convention:
    level i of a w x h image is max(1, w >> i) x max(1, h >> i) (OpenGL's rounding: floor),
    down to 1x1, so a chain has max(w, h).bit_length() levels.
"""

from __future__ import annotations

__all__ = ["level_sizes", "LANCZOS_A"]

LANCZOS_A = 3  # the Lanczos window's lobes (Lanczos-3)


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """OpenGL's mip chain: (max(1, w >> i), max(1, h >> i)) down to 1x1."""
    count = max(width, height).bit_length()
    return [(max(1, width >> i), max(1, height >> i)) for i in range(count)]
