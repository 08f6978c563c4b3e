"""The image as a plane seen obliquely: uv and uv gradients per screen pixel, for filter comparisons.

The viewer renders the plane with `glmip.Pyramid.warp` (the rasterizer derives uv and its gradients
itself) through `glmip.tilt_homography`, the same geometry; `plane_view` is kept as the numpy
reference of that geometry (tests) and for the panel's level range, `plane_inside` masks the plane.

Convention:
    the plane has the image's aspect ratio, height 1, and is rotated by `tilt` degrees about its
    horizontal centre line, its top edge away from a pinhole camera at distance `DISTANCE`; at zoom 1
    the projected plane fills 95% of the view, centred. Pixel (i, j) is seen through its centre;
    grad[..., 0, :] = d(u, v)/dx and grad[..., 1, :] = d(u, v)/dy per screen pixel, exact (analytic),
    as `glmip.Pyramid.sample(grad=...)` takes them.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fitting_focal", "comparison_split", "plane_view"]

DISTANCE = 1.5  # camera to plane centre, in plane heights: close enough for strong foreshortening


def fitting_focal(size: tuple[int, int], aspect: float, tilt: float) -> float:
    """The focal length (pixels) at which the projected plane fills 95% of a view of `size`; its near
    (bottom) edge is its widest."""
    theta = math.radians(tilt)
    near, far = DISTANCE - 0.5 * math.sin(theta), DISTANCE + 0.5 * math.sin(theta)
    per_focal_width = aspect / near
    per_focal_height = 0.5 * math.cos(theta) * (1 / near + 1 / far)
    return 0.95 * min(size[0] / per_focal_width, size[1] / per_focal_height)


def comparison_split(size: tuple[int, int], aspect: float, tilt: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """How two views of the plane share an area of `size`: side by side or one above the other,
    whichever shows the plane larger. Returns (each view's size, the second view's offset)."""
    width, height = size
    beside, stacked = (max(1, width // 2), max(1, height)), (max(1, width), max(1, height // 2))
    if fitting_focal(beside, aspect, tilt) >= fitting_focal(stacked, aspect, tilt):
        return beside, (beside[0], 0)
    return stacked, (0, stacked[1])


def plane_view(size: tuple[int, int], aspect: float, tilt: float, zoom: float = 1.0,
               pan: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a view of `size` = (width, height) pixels: uv (h, w, 2), grad (h, w, 2, 2) and the mask
    (h, w) of pixels that see the plane. `aspect` is the image's width / height."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"view size must be positive, got {size}")
    if not 0.0 <= tilt < 90.0:
        raise ValueError(f"tilt must be within [0, 90) degrees, got {tilt}")
    if aspect <= 0 or zoom <= 0:
        raise ValueError(f"aspect and zoom must be positive, got {aspect}, {zoom}")
    theta = math.radians(tilt)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    near, far = DISTANCE - 0.5 * sin_t, DISTANCE + 0.5 * sin_t  # depths of the bottom and top edges
    focal = fitting_focal(size, aspect, tilt) * zoom
    centre = 0.5 * focal * (0.5 * cos_t / near - 0.5 * cos_t / far)  # middle of the projected top..bottom
    x = (np.arange(width, dtype=np.float64) + 0.5 - width / 2 - pan[0])[None, :]
    y = (np.arange(height, dtype=np.float64) + 0.5 - height / 2 - pan[1] + centre)[:, None]
    # A screen row y sees plane row Y where y = focal * Y cos(t) / (DISTANCE - Y sin(t)).
    denominator = focal * cos_t + y * sin_t
    above_horizon = denominator > 1e-9
    safe = np.where(above_horizon, denominator, 1.0)
    plane_y = y * DISTANCE / safe
    depth = DISTANCE - plane_y * sin_t
    plane_x = x * depth / focal
    d_plane_y_dy = DISTANCE * focal * cos_t / safe**2
    u = plane_x / aspect + 0.5
    v = np.broadcast_to(plane_y + 0.5, u.shape)
    uv = np.stack([u, v], axis=-1)
    grad = np.zeros((height, width, 2, 2))
    grad[..., 0, 0] = depth / (focal * aspect)  # du/dx
    grad[..., 1, 0] = -x * sin_t * d_plane_y_dy / (focal * aspect)  # du/dy
    grad[..., 1, 1] = d_plane_y_dy  # dv/dy (dv/dx = 0: screen rows are plane rows)
    inside = above_horizon & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    return uv.astype(np.float32), grad.astype(np.float32), inside


def plane_inside(matrix: np.ndarray, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """(h, w) mask of the view pixels of `size` whose centres see the plane under `matrix` (view pixel ->
    image pixel, as `glmip.tilt_homography` makes it): in front of the camera and within the image,
    as `plane_view`'s mask."""
    width, height = size
    x = np.arange(width, dtype=np.float64)[None, :] + 0.5
    y = np.arange(height, dtype=np.float64)[:, None] + 0.5
    q = [matrix[r, 0] * x + matrix[r, 1] * y + matrix[r, 2] for r in range(3)]
    front = q[2] > 1e-9
    return front & (q[0] >= 0) & (q[0] <= q[2] * image_size[0]) & (q[1] >= 0) & (q[1] <= q[2] * image_size[1])
