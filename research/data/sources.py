"""Where examples come from. Every source returns a whole pool of examples; tasks split it.

Built-in sources work offline: scikit-learn's bundled 8x8 digits, MNIST-1D generated in memory with
``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads and writes a pickle into the working
directory), and word pairs labelled by relation (``relations``, research.data.text). Users bring their own data as
a ``.npz`` of arrays (used as stored unless the task sets ``scale``), a folder of images, one sub-folder per class
(pixels scaled to [0, 1]), or a table of texts (``text``: CSV, JSONL, parquet or a saved ``datasets`` folder).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.config import SOURCES
from research.data.text import read_text_table, relation_pairs, text_labels
from research.errors import ConfigError

GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class SourceData:
    """A pool of examples: ``x`` is float32 shaped (N, C, H, W) for images, (N, C, L) for signals or (N, D), or
    for text sources an array of strings, (N,) for single texts or (N, 2) for text pairs."""

    x: np.ndarray
    y: np.ndarray  # int64 class indices into class_names
    class_names: tuple[str, ...]
    # An image folder too large for memory (research.data.stream): ``x`` holds the files, ``load(files)`` reads
    # them as ``x`` would have held them, and ``shape`` is one image's shape.
    load: Callable[[np.ndarray], np.ndarray] | None = None
    shape: tuple[int, ...] | None = None

    @property
    def on_disk(self) -> bool:
        return self.load is not None

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.shape if self.shape is not None else tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.kind == "array" and len(self.example_shape) == 3

    @property
    def kind(self) -> str:
        """``text`` (strings, tokenised by the model's tokenizer) or ``array`` (numbers)."""
        return "text" if self.load is None and self.x.dtype.kind in "OUS" else "array"


def load_source(
    source: str,
    path: str | None = None,
    mnist1d_samples: int = 5000,
    scale: float | None = None,
    columns: tuple[str, str | None, str] = ("text", None, "label"),
    stream: str = "never",
    budget_mb: float = 4096.0,
) -> SourceData:
    """A source's whole pool. ``scale`` (npz only; the task key of that name) divides ``x``; the built-in sources
    come scaled and image folders are always scaled to [0, 1], so a scale for them is refused, not ignored.
    ``columns`` (text only): the text, text-pair and label columns (research.data.text). ``stream`` and
    ``budget_mb`` (folders; ``data.stream``, ``data.memory_budget_mb``): whether the images stay on disk."""
    if scale is not None and source != "npz":
        raise ConfigError(f"scale: only npz sources take a scale; source '{source}' takes none")
    if source == "digits":
        return _digits()
    if source == "mnist1d":
        return _mnist1d(mnist1d_samples)
    if source == "npz":
        # Not cached: each call reads the file again, so tasks on one file with different scales never share x.
        return _npz(str(path), scale)
    if source == "folder":
        return _image_folder(str(path), stream, budget_mb)
    if source == "text":
        return _text_table(str(path), *columns)
    if source == "relations":
        return SourceData(*relation_pairs())
    raise ConfigError(f"unknown task source '{source}'; valid choices: {', '.join(SOURCES)}")


def _text_table(path: str, text_column: str, text_pair_column: str | None, label_column: str) -> SourceData:
    x, labels, class_names = read_text_table(path, text_column, text_pair_column, label_column)
    y, names = text_labels(labels, class_names, path)
    return SourceData(x, y, names)


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


def _npz(path: str, scale: float | None = None) -> SourceData:
    """A ``.npz`` with arrays ``x`` (N, ...) and ``y`` (N,), and optionally ``class_names`` (see ``_npz_labels``).

    ``x`` is used as stored, cast to float32, whatever its dtype: integer columns of a table are features, not
    pixels, so nothing is rescaled unless the task asks for it with ``scale`` (``x / scale``; 255 maps 8-bit
    pixels to [0, 1]). An (N, H, W) ``x`` is taken as grey-scale images and gets a channel axis.
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
    if scale is not None:
        x = x / scale  # integer x divides in float64: scale 255 gives exactly what the old automatic /255 gave
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    labels, class_names = _npz_labels(y, names, path)
    return SourceData(x, labels, class_names)


def _npz_labels(y: np.ndarray, names: np.ndarray | None, path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices into the class names, and the class names, of an npz file's ``y``.

    Without ``class_names``, the classes are the distinct values of ``y``, sorted. With it, ``y`` is read in one
    of two conventions, tried in this order:

    1. label values: every value of ``y``, as text, is one of ``class_names`` (e.g. ``y = ["cat", "dog", ...]``,
       or ``y = [3, 7, ...]`` with ``class_names = ["7", "3"]``); ``y`` holds the names and ``class_names`` only
       fixes their order (and may name classes that have no examples);
    2. indices (scikit-learn's convention): ``y`` is integer in 0..K-1 and ``class_names[i]`` names class i
       (e.g. ``y = [0, 1, ...]``, ``class_names = ["cat", "dog"]``).

    Integer ``y`` whose values are also names (``class_names = ["1", "0"]``) fits both; the first reading wins,
    so ``y == 0`` is class ``"0"``. The two agree only when every name is its own index. Anything that fits
    neither is a ConfigError naming both. Either way a task's ``classes`` are class names.
    """
    if y.ndim != 1:
        raise ConfigError(f"npz source {path}: y must be one label per example, shape (N,); found {y.shape}")
    values, inverse = np.unique(y, return_inverse=True)
    texts = [str(v) for v in values]
    if names is None:
        return inverse.astype(np.int64), tuple(texts)
    if names.ndim != 1:
        raise ConfigError(f"npz source {path}: class_names must be a list of names, shape (K,); found {names.shape}")
    class_names = tuple(str(n) for n in names)
    if not class_names:
        raise ConfigError(f"npz source {path}: class_names is empty; leave it out to name classes by their labels")
    if len(set(class_names)) != len(class_names):
        repeated = sorted({n for n in class_names if class_names.count(n) > 1})
        raise ConfigError(f"npz source {path}: class_names has duplicates {repeated[:5]}")
    position = {name: i for i, name in enumerate(class_names)}
    if all(t in position for t in texts):
        return np.array([position[t] for t in texts], dtype=np.int64)[inverse], class_names
    if np.issubdtype(y.dtype, np.integer) and values[0] >= 0 and values[-1] < len(class_names):
        return y.astype(np.int64), class_names
    unknown = [t for t in texts if t not in position]
    shown = list(class_names[:10]) + (["..."] if len(class_names) > 10 else [])
    found = f"labels {unknown[:5]} that are not in class_names"
    if np.issubdtype(y.dtype, np.integer):
        found += f" and integers {values[0]}..{values[-1]}, not all within 0..{len(class_names) - 1}"
    raise ConfigError(
        f"npz source {path}: y fits neither reading of class_names {shown}: y must hold either the names "
        f"themselves (every label found in class_names, compared as text) or integer indices 0..{len(class_names) - 1}"
        f" into class_names (scikit-learn's convention); y holds {found}"
    )


def _image_folder(path: str, stream: str = "never", budget_mb: float = 4096.0) -> SourceData:
    """``path/<class name>/<image>``: every image the same size; grey-scale unless any image has colour. Pixels
    are always scaled to [0, 1] (8-bit values / 255), so a folder task takes no ``scale``. Only the headers are
    read first; the pixels are read now, or, when they would exceed the memory budget (or ``stream`` is
    ``always``), whenever examples are taken (research.data.stream)."""
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
    headers = []
    for file, _ in files:
        try:
            with Image.open(file) as img:  # the header only: size and mode
                headers.append((img.size, img.mode))
        except OSError as err:
            raise ConfigError(f"folder source: cannot read image {file}: {err}") from None
    mode = "L" if all(m in GREY_MODES for _, m in headers) else "RGB"
    sizes = {size for size, _ in headers}
    if len(sizes) > 1:
        raise ConfigError(f"folder source {path}: images differ in size {sorted(sizes)[:4]}; resize them first")
    (width, height), channels = sizes.pop(), 1 if mode == "L" else 3
    y = np.array([label for _, label in files], dtype=np.int64)
    names = tuple(d.name for d in class_dirs)
    paths = np.array([str(f) for f, _ in files], dtype=object)
    load = functools.partial(read_images, mode=mode)
    stored_mb = len(files) * channels * height * width * 4 / 2**20
    if stream == "always" or (stream == "auto" and stored_mb > budget_mb):
        return SourceData(paths, y, names, load=load, shape=(channels, height, width))
    return SourceData(load(paths), y, names)


def read_images(files: np.ndarray, mode: str) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [0, 1], converted to ``mode`` (``L``: grey, one channel; ``RGB``)."""
    from PIL import Image

    arrays = []
    for file in files:
        try:
            with Image.open(file) as img:
                arrays.append(np.asarray(img.convert(mode), dtype=np.float32) / 255.0)
        except OSError as err:
            raise ConfigError(f"folder source: cannot read image {file}: {err}") from None
    x = np.stack(arrays)
    return x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
