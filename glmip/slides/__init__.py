"""Gigapixel slides: pyramidal tiled TIFFs (or arrays of any size) sampled through GPU tiles with halos,
relevance over the whole slide, budgeted tokens and their HIPT region grouping. Needs the `slide` extra
(tiffslide, tifffile) for files."""

from __future__ import annotations

from .reader import SlideReadError
from .regions import group_by_region, region_ids
from .slide import Slide, otsu_threshold, tissue_mask

__all__ = ["Slide", "SlideReadError", "region_ids", "group_by_region", "otsu_threshold", "tissue_mask"]
