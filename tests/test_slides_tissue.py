"""Otsu's threshold through scikit-image: what it returns against glmip's former hand-written Otsu (the same
histogram cut, reported as the bin centre instead of the bin's upper edge), and tissue masks equal to the former
ones because `tissue_mask` hands scikit-image whole bins."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from glmip.slides import otsu_threshold, tissue_mask


def former_otsu(values: np.ndarray, bins: int = 256) -> float:
    """glmip's Otsu before it used scikit-image, kept here as the reference: the upper edge of the last bin
    of the lower class of the `bins`-bin histogram over the values' range, by between-class variance."""
    flat = np.asarray(values, np.float64).ravel()
    lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(flat, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)[:-1].astype(np.float64)
    total = float(counts.sum())
    mass = np.cumsum(counts * centres)[:-1]
    below = mass / np.maximum(weight, 1)
    above = (mass[-1] + counts[-1] * centres[-1] - mass) / np.maximum(total - weight, 1)
    between = weight * (total - weight) * (below - above) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def former_tissue(pixels: np.ndarray) -> np.ndarray:
    """The former `tissue_mask` of an RGB picture: saturation above `former_otsu`."""
    values = pixels.astype(np.float32)
    if pixels.dtype != np.float32:
        values /= float(np.iinfo(pixels.dtype).max)
    top = values[..., :3].max(axis=2)
    saturation = (top - values[..., :3].min(axis=2)) / np.maximum(top, 1e-6)
    return saturation, saturation > former_otsu(saturation)


def two_classes(seed: int, low: float, high: float, spread: float, share: float, size: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_high = int(size * share)
    return np.concatenate([rng.normal(low, spread, size - n_high), rng.normal(high, spread, n_high)]).clip(0, 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), low=st.floats(0.0, 0.4), gap=st.floats(0.1, 0.6),
       spread=st.floats(0.01, 0.15), share=st.floats(0.05, 0.95), bins=st.sampled_from([16, 64, 256]))
def test_scikit_image_cuts_where_the_former_otsu_did_half_a_bin_lower(seed, low, gap, spread, share, bins):
    """The same cut of the same histogram: scikit-image reports the chosen bin's centre, the former code its
    upper edge, so the two differ by exactly half a bin; only values inside that half bin change class."""
    values = two_classes(seed, low, min(1.0, low + gap), spread, share)
    half_bin = (values.max() - values.min()) / bins / 2
    threshold, former = otsu_threshold(values, bins), former_otsu(values, bins)
    assert abs(threshold - (former - half_bin)) <= 1e-9 * max(1.0, abs(former))
    moved = (values > threshold) != (values > former)
    assert np.all((values[moved] > threshold) & (values[moved] <= former))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), background=st.floats(0.2, 0.95), deep=st.booleans())
def test_tissue_masks_equal_the_former_ones(seed, background, deep):
    """Random stains over a noisy pale background: the mask is the former one, but for a pixel whose
    saturation sits on the cut's bin edge itself (float rounding decides its bin either way)."""
    rng = np.random.default_rng(seed)
    picture = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    pale = rng.random((120, 160)) < background
    picture[pale] = rng.integers(215, 250, (int(pale.sum()), 3))
    if deep:
        picture = picture.astype(np.uint16) * 257 + rng.integers(0, 257, picture.shape).astype(np.uint16)
    saturation, former = former_tissue(picture)
    got = tissue_mask(picture).astype(bool)
    edge = former_otsu(saturation)
    assert np.all(np.abs(saturation[got != former] - edge) <= 1e-6)
    assert (got != former).mean() <= 1e-3


def test_threshold_splits_two_classes_and_keeps_a_constant():
    assert otsu_threshold(np.array([0.0, 0.0, 1.0, 1.0])) == 0.5 / 256  # the first bin's centre
    assert otsu_threshold(np.full((3, 4), 0.25)) == 0.25
    values = two_classes(0, 0.1, 0.7, 0.05, 0.3)
    assert 0.2 < otsu_threshold(values) < 0.6


def test_tissue_mask_is_saturation_above_otsu():
    """Saturated (tissue) blobs on a grey-white background, 8-bit and 16-bit alike; grey slides use darkness;
    NaN (a float slide's no-data) is background."""
    rng = np.random.default_rng(3)
    picture = np.full((64, 96, 3), 235, np.uint8) + rng.integers(0, 8, (64, 96, 3), dtype=np.uint8)
    truth = np.zeros((64, 96), bool)
    truth[10:30, 20:50] = truth[40:60, 60:90] = True
    picture[truth] = (200, 90, 160) + rng.integers(-10, 10, (int(truth.sum()), 3))
    np.testing.assert_array_equal(tissue_mask(picture), truth.astype(np.float32))
    np.testing.assert_array_equal(tissue_mask(picture.astype(np.uint16) * 257), truth.astype(np.float32))
    grey = np.where(truth, 60, 230).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(tissue_mask(grey), truth.astype(np.float32))
    floats = picture.astype(np.float32) / 255
    floats[0, 0] = np.nan
    assert tissue_mask(floats)[0, 0] == 0 and tissue_mask(floats)[truth].all()
