"""Task transforms that shift the input domain while keeping the classes: a fixed permutation of input
features (permuted-MNIST style, Goodfellow et al. 2013) and a fixed rotation (rotated-MNIST style)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from research.config import TransformConfig
from research.errors import ConfigError


def apply_transform(x: np.ndarray, transform: TransformConfig | None, where: str) -> np.ndarray:
    if transform is None:
        return x
    if x.dtype.kind in "OUS":
        raise ConfigError(f"{where}.transform: {transform.kind} transforms numeric inputs; this source is text")
    if transform.kind == "permute":
        return permute_features(x, transform.seed)
    if x.ndim != 4:
        raise ConfigError(
            f"{where}.transform: rotate needs image data (N, C, H, W); this source has shape {x.shape[1:]}"
        )
    return rotate_images(x, transform.degrees)


def permute_features(x: np.ndarray, seed: int) -> np.ndarray:
    """The same permutation of the flattened features for every example, drawn from ``seed``."""
    flat = x.reshape(len(x), -1)
    order = np.random.default_rng(seed).permutation(flat.shape[1])
    return flat[:, order].reshape(x.shape)


def rotate_images(x: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every image counter-clockwise about its centre (bilinear, zero fill, same size)."""
    rotated = ndimage.rotate(x, degrees, axes=(-1, -2), reshape=False, order=1, mode="constant", cval=0.0)
    return rotated.astype(np.float32)
