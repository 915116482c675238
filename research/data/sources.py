"""Where examples come from. Every source returns a whole pool of examples; tasks split it.

Built-in sources work offline: scikit-learn's bundled 8x8 digits, MNIST-1D generated in memory with
``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads and writes a pickle into the working
directory), and word pairs labelled by relation (``relations``, research.data.text). Users bring their own data as
a ``.npz`` of arrays (used as stored unless the task sets ``scale``), a folder of images, one sub-folder per class
(pixels scaled to [0, 1]), or a table of texts (``text``: CSV, JSONL, parquet or a saved ``datasets`` folder).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

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
    _check_npz_headers(file, path)  # before anything is allocated: a header may declare terabytes
    try:
        with np.load(file, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
            names = arrays.get("class_names", None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # e.g. a bad CRC inside
        raise ConfigError(f"npz source {path}: cannot read it ({' '.join(str(err).split())})") from None
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"npz source {path}: x has {len(x)} rows and y has {len(y)}; they must match and be > 0")
    if scale is not None:
        x = x / scale  # integer x divides in float64: scale 255 gives exactly what the old automatic /255 gave
    x = np.asarray(x, dtype=np.float32)
    _check_finite(x, path)
    if x.ndim == 3:
        x = x[:, None]
    labels, class_names = _npz_labels(y, names, path)
    return SourceData(x, labels, class_names)


# The arrays an npz source reads; any other member of the file is left alone (and unread).
NPZ_ARRAYS = ("x", "y", "class_names")
NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what becomes float32 features


def memory_bytes() -> int | None:
    """This machine's physical memory, the limit above which an npz file is refused before it is read (the whole
    file is held in memory, and x again as float32); None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_npz_headers(file: Path, path: str) -> None:
    """Refuse an npz file from its zip directory and .npy headers alone, before any array is allocated: not a zip
    of .npy arrays, no ``x`` or ``y``, a header that declares more bytes than its member holds (a corrupt or
    crafted file: numpy would allocate what it declares first), an ``x`` that is not numbers or not one example
    per row, or arrays larger than this machine's memory."""
    try:
        with zipfile.ZipFile(file) as archive:
            members = sorted(info.filename.removesuffix(".npy") for info in archive.infolist())
            headers = {
                info.filename.removesuffix(".npy"): _npy_header(archive, info, path)
                for info in archive.infolist()
                if info.filename.removesuffix(".npy") in NPZ_ARRAYS
            }
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ConfigError(
            f"npz source {path}: not a readable .npz file (a zip of .npy arrays, as numpy.savez writes): "
            f"{' '.join(str(err).split())}"
        ) from None
    if "x" not in headers or "y" not in headers:
        raise ConfigError(f"npz source {path}: needs arrays 'x' and 'y'; found {members}")
    (x_shape, x_dtype, _), (y_shape, _, _) = headers["x"], headers["y"]
    if x_dtype.kind not in NUMERIC_KINDS:
        raise ConfigError(
            f"npz source {path}: x must hold numbers (integers, floats or booleans); found dtype {x_dtype.str} "
            f"({_dtype_kind(x_dtype)})"
        )
    if len(x_shape) < 2:
        what = "a single number" if not x_shape else f"one number per example, shape {x_shape}"
        raise ConfigError(
            f"npz source {path}: x must be one example per row, shape (N, features) or (N, ...); found {what} "
            "(reshape it to (N, 1) for one feature per example)"
        )
    if 0 in x_shape[1:]:
        raise ConfigError(f"npz source {path}: x has shape {x_shape}: its examples have no features")
    if len(y_shape) != 1:
        raise ConfigError(f"npz source {path}: y must be one label per example, shape (N,); found {y_shape}")
    needed = sum(size for _, _, size in headers.values()) + 4 * math.prod(x_shape)  # and x again as float32
    limit = memory_bytes()
    if limit is not None and needed > limit:
        raise ConfigError(
            f"npz source {path}: x of shape {x_shape} would take {_size(needed)} in memory (as stored and as "
            f"float32), more than this machine's {_size(limit)}"
        )


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data) of one .npy member, read from its header; refused when the header is
    unreadable, declares Python objects (never unpickled), or declares other than the bytes the member holds."""
    name = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as member:
            version = npy_format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            header = member.tell()
    except ValueError as err:
        raise ConfigError(f"npz source {path}: array '{name}' has no readable .npy header ({err})") from None
    if dtype.hasobject:
        raise ConfigError(
            f"npz source {path}: array '{name}' holds Python objects (a pickle), which are never loaded; save it as "
            "numbers or strings"
        )
    declared = math.prod(shape) * dtype.itemsize
    held = info.file_size - header
    if declared != held:
        raise ConfigError(
            f"npz source {path}: array '{name}' declares shape {shape} of {dtype.str} ({_size(declared)}) but holds "
            f"{_size(max(held, 0))}: the file is corrupt or truncated"
        )
    return shape, dtype, declared


def _check_finite(x: np.ndarray, path: str) -> None:
    """NaN or Inf features make every loss NaN, so the run would fail at its first evaluation: refuse them here."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
        raise ConfigError(
            f"npz source {path}: x holds {int(bad.sum())} non-finite value{'s' * (int(bad.sum()) > 1)} (NaN or Inf, "
            f"or beyond float32's range), the first in example {first}; remove or replace them"
        )


def _dtype_kind(dtype: np.dtype) -> str:
    kinds = {"U": "text", "S": "bytes", "c": "complex numbers", "M": "dates", "m": "time spans", "V": "records"}
    return kinds.get(dtype.kind, dtype.name)


def _size(count: int) -> str:
    """Bytes as a human reads them (``7.3 TiB``)."""
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} bytes"


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
        with open_image(file) as img:  # the header only: size and mode
            headers.append((img.size, img.mode))
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
    arrays = []
    for file in files:
        with open_image(file) as img:
            try:
                arrays.append(np.asarray(img.convert(mode), dtype=np.float32) / 255.0)
            except OSError as err:
                raise ConfigError(f"folder source: cannot read image {file}: {err}") from None
    x = np.stack(arrays)
    return x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)


@contextlib.contextmanager
def open_image(file: str | Path) -> Iterator:
    """A PIL image of a regular file, refused as a ConfigError naming the file when it is not one (a FIFO would
    block the read forever, a device could be endless), when PIL cannot read it, or when it has more pixels than
    PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; above it PIL only warns, below twice it, and
    the pixels would then be decoded into memory: both are refused here)."""
    from PIL import Image

    with _regular_file(file) as handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(handle)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ConfigError(
                f"folder source: image {file} is too large to read safely ({str(err).rstrip('.')}; "
                "PIL.Image.MAX_IMAGE_PIXELS sets the limit)"
            ) from None
        except OSError as err:
            raise ConfigError(f"folder source: cannot read image {file}: {err}") from None
        with img:
            yield img


@contextlib.contextmanager
def _regular_file(file: str | Path) -> Iterator:
    """``file`` opened for reading in binary, if it is a regular file (links followed). Checked before opening,
    and again on the opened file (opened without blocking, so a FIFO put there in between cannot hang it)."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            raise ConfigError(_not_regular(file, os.stat(file).st_mode))
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ConfigError(f"folder source: cannot read image {file}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(_not_regular(file, mode))
        yield handle


def _not_regular(file: str | Path, mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"folder source: {file} is {kind}, not an image file; remove it from the folder or rename it"
