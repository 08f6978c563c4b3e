"""HIPT grouping: each token's region on a grid of `region`-pixel squares over level 0, and tokens batched
as [regions x tokens] for a hierarchical model (256-px patches -> 4096-px regions -> the slide).

Convention: region (i, j) covers level-0 pixels [j * region, (j + 1) * region) x [i * region, ...); its id is
i * columns + j with columns = ceil(width / region); a token belongs to the region holding its centre
(a token larger than a region counts in the one its centre falls in).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["region_ids", "group_by_region"]

DEFAULT_REGION = 4096


def region_ids(layout: Any, region: int = DEFAULT_REGION) -> np.ndarray:
    """(N,) int64 region id of each token of `layout` (a `TokenLayout`) on the `region`-pixel grid."""
    if not all(hasattr(layout, name) for name in ("cx", "cy", "image_size")):
        raise TypeError(f"layout must be a glmip.TokenLayout, got {type(layout).__name__}")
    if not isinstance(region, (int, np.integer)) or isinstance(region, bool) or region < 1:
        raise ValueError(f"region must be a positive int (level-0 pixels a side), got {region!r}")
    width, height = layout.image_size
    columns = -(-int(width) // region)
    rows = -(-int(height) // region)
    column = np.clip(np.floor(np.asarray(layout.cx, np.float64) / region), 0, columns - 1).astype(np.int64)
    row = np.clip(np.floor(np.asarray(layout.cy, np.float64) / region), 0, rows - 1).astype(np.int64)
    return row * columns + column


def group_by_region(layout: Any, tokens: Any, region: int = DEFAULT_REGION) -> tuple[np.ndarray, Any, Any]:
    """Tokens (N, ...) as a padded [regions x tokens] batch for a HIPT-style model.

    Returns (ids (R,) int64 of the non-empty regions in ascending order, batch (R, T, ...) with T the
    most tokens in one region, valid (R, T) bool, True = a real token). Within a region tokens keep their
    layout order, first in their row. `tokens` is a torch tensor (as `Slide.tokens` gives) or a numpy array.

    Convention:
        `valid` is glmip's one mask polarity (as `TokenBatch.valid`, `LodEmbedding.valid`, SDPA's bool
        `attn_mask`); torch's `key_padding_mask` is `~valid`.
    """
    ids = region_ids(layout, region)
    if not hasattr(tokens, "shape") or not hasattr(tokens, "__getitem__") or len(tokens.shape) == 0:
        raise TypeError(f"tokens must be a torch tensor or numpy array (N, ...), got {type(tokens).__name__}")
    if len(ids) != tokens.shape[0]:
        raise ValueError(f"the layout has {len(ids)} tokens but tokens has {tokens.shape[0]}")
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    slot = np.arange(len(ids)) - np.repeat(np.cumsum(counts) - counts, counts)
    longest = int(counts.max()) if len(counts) else 0
    if hasattr(tokens, "new_zeros"):
        import torch

        batch = tokens.new_zeros((len(unique), longest, *tokens.shape[1:]))
        valid = torch.zeros((len(unique), longest), dtype=torch.bool)
        rows, cols, source = torch.from_numpy(inverse[order]), torch.from_numpy(slot), torch.from_numpy(order)
    else:
        batch = np.zeros((len(unique), longest, *tokens.shape[1:]), tokens.dtype)
        valid = np.zeros((len(unique), longest), bool)
        rows, cols, source = inverse[order], slot, order
    batch[rows, cols] = tokens[source]
    valid[rows, cols] = True
    return unique, batch, valid
