"""Identity: does the face keep the reference avatar's colours where they never change?

The renderer marks the skin, hair and background pixels that keep their colour under any head motion, blink or
mouth shape (:attr:`FaceRenderer.regions`). For each region with at least ``MIN_PIXELS`` pixels, the error of a
frame is the Euclidean distance between the region's mean RGB in the frame and in the reference image, over
255 (0 = same colour, √3 = black against white). The identity error is the mean over frames, then over regions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_PIXELS", "identity_error"]

MIN_PIXELS = 20  # a region smaller than this (a bald head's hair) is not scored


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask."""
    rows = (np.arange(height) * mask.shape[0] // height).clip(0, mask.shape[0] - 1)
    cols = (np.arange(width) * mask.shape[1] // width).clip(0, mask.shape[1] - 1)
    return mask[rows][:, cols]


def identity_error(frames: np.ndarray, reference: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-region errors and their mean (key ``"mean"``) of ``frames`` [N, H, W, 3] against ``reference``
    [h, w, 3] (both uint8 RGB), with region masks at the reference's size."""
    height, width = frames.shape[1:3]
    errors = {}
    for name, mask in regions.items():
        if mask.sum() < MIN_PIXELS:
            continue
        target = reference[mask].astype(np.float64).mean(axis=0)  # [3]
        frame_mask = _resize_mask(mask, height, width) if (height, width) != mask.shape else mask
        means = frames[:, frame_mask].astype(np.float64).mean(axis=1)  # [N, 3]
        errors[name] = float(np.linalg.norm(means - target, axis=1).mean() / 255)
    errors["mean"] = float(np.mean(list(errors.values()))) if errors else float("nan")
    return errors
