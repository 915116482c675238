"""Where examples come from. Every source returns a whole pool of examples; tasks split it.

Built-in sources work offline: scikit-learn's bundled 8x8 digits, and MNIST-1D generated in memory with
``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads and writes a pickle into the working
directory). Users bring their own data as a ``.npz`` of arrays or a folder of images, one sub-folder per class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.errors import ConfigError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class SourceData:
    """A pool of examples: ``x`` is float32 shaped (N, C, H, W) for images, (N, C, L) for signals or (N, D)."""

    x: np.ndarray
    y: np.ndarray  # int64 class indices into class_names
    class_names: tuple[str, ...]

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4


def load_source(source: str, path: str | None = None, mnist1d_samples: int = 5000) -> SourceData:
    if source == "digits":
        return _digits()
    if source == "mnist1d":
        return _mnist1d(mnist1d_samples)
    if source == "npz":
        return _npz(str(path))
    if source == "folder":
        return _image_folder(str(path))
    raise ConfigError(f"unknown task source '{source}'; valid choices: digits, mnist1d, npz, folder")


@functools.cache
def _digits() -> SourceData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]  # pixel values are 0..16
    return SourceData(x, bunch.target.astype(np.int64), tuple(str(c) for c in bunch.target_names))


@functools.cache
def _mnist1d(num_samples: int) -> SourceData:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    data = make_dataset(args)  # deterministic: seeded by args.seed (42)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None, :]
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return SourceData(x, y, tuple(str(c) for c in range(10)))


def _npz(path: str) -> SourceData:
    """A ``.npz`` with arrays ``x`` (N, ...) and ``y`` (N,), and optionally ``class_names``.

    Integer ``x`` is taken as 8-bit pixels and scaled to [0, 1]; (N, H, W) images get a channel axis.
    ``y`` may hold integers or strings; class names default to the sorted distinct labels.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"npz source: file not found: {path}")
    try:
        with np.load(file, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise ConfigError(f"npz source {path}: needs arrays 'x' and 'y'; found {sorted(arrays.files)}")
            x, y = arrays["x"], arrays["y"]
            names = arrays.get("class_names", None)
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        raise ConfigError(f"npz source {path}: cannot read it ({err})") from None
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"npz source {path}: x has {len(x)} rows and y has {len(y)}; they must match and be > 0")
    if np.issubdtype(x.dtype, np.integer):
        x = x / 255.0
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if names is None:
        names = np.unique(y)
    names = tuple(str(n) for n in names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(v) for v in y} - set(index))
    if unknown:
        raise ConfigError(f"npz source {path}: labels {unknown[:5]} are not in class_names {list(names)}")
    labels = np.array([index[str(v)] for v in y], dtype=np.int64)
    return SourceData(x, labels, names)


def _image_folder(path: str) -> SourceData:
    """``path/<class name>/<image>``: every image the same size; grey-scale unless any image has colour."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"folder source: not a directory: {path}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not class_dirs:
        raise ConfigError(f"folder source {path}: no class sub-folders found")
    files = [
        (f, label)
        for label, d in enumerate(class_dirs)
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise ConfigError(f"folder source {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as img:
                images.append(img.copy())
        except OSError as err:
            raise ConfigError(f"folder source: cannot read image {file}: {err}") from None
    mode = "L" if all(img.mode in GREY_MODES for img in images) else "RGB"
    sizes = {img.size for img in images}
    if len(sizes) > 1:
        raise ConfigError(f"folder source {path}: images differ in size {sorted(sizes)[:4]}; resize them first")
    arrays = [np.asarray(img.convert(mode), dtype=np.float32) / 255.0 for img in images]
    x = np.stack(arrays)
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    y = np.array([label for _, label in files], dtype=np.int64)
    return SourceData(x, y, tuple(d.name for d in class_dirs))
