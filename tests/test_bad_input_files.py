"""Bad input inside files and overrides, through the real command line (issue 16): YAML syntax errors in
``key=value`` overrides, npz files that are not what they claim, image folders holding a decompression bomb or
a FIFO, ``pretrain.checkpoint`` folders with a bad manifest or non-finite weights, and a model too large to
allocate. Each must end as tests/test_bad_input.py promises: exit code 2, one line on stderr naming the
problem, and nothing written (no ``out`` folder, no new file), checked before a run directory exists."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from numpy.lib import format as npy_format
from PIL import Image
from test_bad_input import SPLIT, refused_in_one_line

from research.config import ModelConfig
from research.models import build_model
from research.training.checkpoints import save_weights

DEMO_GRID = SPLIT.parent / "grids" / "demo.yaml"

Argv = tuple[str, str, list[str]]


def refused(argv: Argv, expected: list[str], tmp: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Exit code 2, one line naming the problem (every part of ``expected`` in it), nothing on stdout, nothing
    written under ``tmp``."""
    command, path, overrides = argv
    out = tmp / "out"
    captured = refused_in_one_line([command, path, *TINY, f"out={out}", *overrides], tmp, capfd, expected)
    assert captured.out == ""
    assert not out.exists()


# --------------------------------------------------------------------------------------------- overrides

BAD_OVERRIDES = [
    pytest.param("model.hidden=[32,", ["override 'model.hidden=[32,'", "cannot parse the value"], id="unclosed-list"),
    pytest.param("method={name: ewc", ["override 'method={name: ewc'", "cannot parse the value"], id="unclosed-map"),
]


@pytest.mark.parametrize(
    "command", [("run", str(SPLIT)), ("pretrain", str(SPLIT)), ("grid", str(DEMO_GRID))], ids=lambda c: c[0]
)
@pytest.mark.parametrize(("override", "expected"), BAD_OVERRIDES)
def test_yaml_syntax_error_in_an_override_is_refused(
    command: tuple[str, str], override: str, expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    refused((*command, [override]), expected, tmp_path, capfd)


# --------------------------------------------------------------------------------------------- npz files


def _labels() -> np.ndarray:
    return np.repeat([0, 1], 4)


def _savez(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _with_nan(path: Path) -> None:
    x = np.zeros((8, 8, 8), np.float32)
    x[3, 1, 2] = np.nan
    np.savez(path, x=x, y=_labels())


def _with_inf(path: Path) -> None:
    x = np.zeros((8, 64), np.float64)
    x[5, 0] = np.inf
    np.savez(path, x=x, y=_labels())


def _corrupt_zip(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + b"\x00 not a zip at all " * 20)


def _truncated(path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((8, 8, 8)), y=_labels())
    path.write_bytes(buffer.getvalue()[:300])


def _huge_header(path: Path) -> None:
    """A valid zip whose x.npy header declares a (10^7, 10^5) float64 array (7.3 TiB) over 64 bytes of data:
    numpy would allocate what the header declares before reading a byte of it."""
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**7, 10**5)})
    labels = io.BytesIO()
    np.save(labels, _labels())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\x00" * 64)
        archive.writestr("y.npy", labels.getvalue())


NPZ_CASES = [
    pytest.param(_savez(x=np.array(["a"] * 8), y=_labels()), ["x must hold numbers", "text"], id="string-x"),
    pytest.param(_savez(x=np.array(3.0), y=_labels()), ["x must be one example per row", "single number"], id="scalar"),
    pytest.param(_savez(x=np.arange(8.0), y=_labels()), ["one example per row", "(8,)", "(N, 1)"], id="one-d-x"),
    pytest.param(_corrupt_zip, ["not a readable .npz file"], id="corrupt-zip"),
    pytest.param(_truncated, ["not a readable .npz file"], id="truncated-zip"),
    pytest.param(_huge_header, ["'x' declares shape (10000000, 100000)", "7.3 TiB", "corrupt"], id="huge-header"),
    pytest.param(_with_nan, ["non-finite value", "NaN or Inf", "example 3"], id="nan-x"),
    pytest.param(_with_inf, ["non-finite value", "NaN or Inf", "example 5"], id="inf-x"),
]


@pytest.mark.parametrize(("write", "expected"), NPZ_CASES)
def test_bad_npz_file_is_refused_before_the_run_starts(
    write: Callable[[Path], None], expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.npz"
    write(data)
    task = ["pretrain.tasks.0.source=npz", f"pretrain.tasks.0.path={data}", "pretrain.tasks.0.classes=[0,1]"]
    refused(("run", str(SPLIT), task), [f"npz source {data}", *expected], tmp_path, capfd)


# --------------------------------------------------------------------------------------------- image folders


def one_bit_png(path: Path, width: int, height: int) -> None:
    """A valid black 1-bit PNG of the given size, written chunk by chunk: a few KB on disk however large."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def image_folder(root: Path) -> Path:
    """Two classes (a, b) of four 8x8 grey images each."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def _bomb(folder: Path) -> None:  # 4 * 10^8 pixels: over twice PIL's limit, where PIL raises
    one_bit_png(folder / "a" / "big.png", 20000, 20000)


def _over_the_warning(folder: Path) -> None:  # 10^8 pixels: over PIL's limit, where PIL only warns
    one_bit_png(folder / "a" / "big.png", 10000, 10000)


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "a" / "pipe.png")


FOLDER_CASES = [
    pytest.param(_bomb, ["big.png", "too large to read safely", "MAX_IMAGE_PIXELS"], id="decompression-bomb"),
    pytest.param(_over_the_warning, ["big.png", "too large to read safely"], id="over-the-bomb-warning"),
    pytest.param(_fifo, ["pipe.png", "FIFO", "not an image file"], id="fifo"),
]


@pytest.mark.parametrize(("spoil", "expected"), FOLDER_CASES)
def test_bad_image_folder_is_refused(
    spoil: Callable[[Path], None], expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = image_folder(tmp_path / "images")
    spoil(folder)
    task = ["pretrain.tasks.0.source=folder", f"pretrain.tasks.0.path={folder}", "pretrain.tasks.0.classes=[a,b]"]
    refused(("run", str(SPLIT), task), expected, tmp_path, capfd)


# --------------------------------------------------------------------------------------------- checkpoints


def checkpoint_folder(folder: Path, manifest: str | None = None, nan: bool = False) -> Path:
    """A checkpoint that fits the tiny config (MLP 32 wide, head digits_0_4 of 5 classes)."""
    folder.mkdir()
    model = build_model(ModelConfig(hidden=[32]), (1, 8, 8), {"digits_0_4": 5})
    if nan:
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
    save_weights(model, folder / "model.safetensors")
    if manifest is not None:
        (folder / "manifest.json").write_text(manifest)
    return folder


CHECKPOINT_CASES = [
    pytest.param({"manifest": '{"key": "abc", '}, ["manifest.json", "is not valid JSON"], id="manifest-not-json"),
    pytest.param({"manifest": "[1, 2]"}, ["manifest.json", "JSON object", "not a list"], id="manifest-a-list"),
    pytest.param({"nan": True}, ["model.safetensors", "non-finite weights", "backbone."], id="nan-weights"),
]


@pytest.mark.parametrize("command", ["run", "pretrain"])
@pytest.mark.parametrize(("spoil", "expected"), CHECKPOINT_CASES)
def test_bad_checkpoint_folder_is_refused(
    command: str, spoil: dict, expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = checkpoint_folder(tmp_path / "ckpt", **spoil)
    argv = (command, str(SPLIT), [f"pretrain.checkpoint={folder}"])
    refused(argv, ["pretrain.checkpoint", str(folder), *expected], tmp_path, capfd)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param("model.hidden=[100000000000]", ["model.hidden", "parameters", "limit"], id="mlp"),
        pytest.param("model.channels=[1000000,1000000]", ["model.channels", "parameters", "limit"], id="cnn"),
    ],
)
def test_a_model_too_large_to_allocate_is_refused_naming_its_key(
    override: str, expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    extra = ["model.arch=cnn"] if "channels" in override else []
    refused(("run", str(SPLIT), [*extra, override]), expected, tmp_path, capfd)
