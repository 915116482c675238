"""Task sources, splits, transforms, head label mapping, and user data (npz and image folders)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import EXPERIMENTS

from research.config import load_config, run_id, validate_config
from research.data import SHARED_HEAD, TensorBatches, build_tasks
from research.data.fingerprint import content_fingerprints
from research.data.sources import load_source
from research.data.tasks import SharedExamplesWarning
from research.data.transforms import permute_features, rotate_images
from research.errors import ConfigError
from research.training import check, run
from research.training.pretrain import pretrain_key


def config(pretrain: list[dict[str, Any]], finetune: list[dict[str, Any]], **sections: Any):
    raw = {
        "pretrain": {"tasks": pretrain},
        "finetune": {"tasks": finetune},
        "logging": {"wandb": "disabled", "progress": False},
        **sections,
    }
    return validate_config(raw)


def all_labels(task) -> np.ndarray:
    return np.concatenate([task.splits[s][1].numpy() for s in ("train", "val", "test")])


# --------------------------------------------------------------------------------------------- built-in sources


def test_digits_source() -> None:
    data = load_source("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.is_image
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.y.shape == (1797,) and data.y.dtype == np.int64
    assert data.class_names == tuple(str(i) for i in range(10))
    assert set(np.unique(data.y)) == set(range(10))


def test_mnist1d_source() -> None:
    data = load_source("mnist1d", mnist1d_samples=500)
    assert data.x.shape == (500, 1, 40) and data.x.dtype == np.float32
    assert not data.is_image
    assert data.class_names == tuple(str(i) for i in range(10))
    assert set(np.unique(data.y)) == set(range(10))
    again = load_source("mnist1d", mnist1d_samples=500)  # generated deterministically
    np.testing.assert_array_equal(data.x, again.x)


def test_unknown_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="digits, mnist1d, npz, folder"):
        load_source("imagenet")


def test_class_subset_keeps_exactly_those_classes() -> None:
    cfg = config(
        [{"name": "a", "source": "digits", "classes": [1, 3, 8]}],
        [{"name": "b", "source": "digits", "classes": ["0", "9"]}],
    )  # names work as well as indices
    tasks = build_tasks(cfg)
    a, b = tasks.pretrain[0], tasks.finetune[0]
    assert a.classes == ("1", "3", "8") and b.classes == ("0", "9")
    source = load_source("digits")
    counts = np.bincount(source.y)
    # Per-task heads: class k of a task is output k of its head, every example of those classes is used.
    np.testing.assert_array_equal(np.bincount(all_labels(a)), counts[[1, 3, 8]])
    np.testing.assert_array_equal(np.bincount(all_labels(b)), counts[[0, 9]])
    assert tasks.head_sizes == {"a": 3, "b": 2}
    assert a.input_shape == (1, 8, 8)


# --------------------------------------------------------------------------------------------- splits


def _split_cfg(split_seed: int = 0, seed: int = 0, **data: Any):
    return config(
        [{"name": "a", "source": "digits", "classes": [0, 1, 2, 3, 4]}],
        [{"name": "b", "source": "digits", "classes": [5, 6, 7, 8, 9]}],
        data={"split_seed": split_seed, **data},
        seed=seed,
    )


def _max_deviation(y: np.ndarray, pool: np.ndarray) -> float:
    """Largest gap, in examples, between a split's class counts and the pool's class proportions."""
    expected = pool * len(y) / pool.sum()
    return float(np.abs(np.bincount(y, minlength=len(pool)) - expected).max())


def test_split_is_stratified() -> None:
    tasks = build_tasks(_split_cfg())
    for task in tasks.all:
        labels = all_labels(task)
        pool = np.bincount(labels)
        total = len(labels)
        assert sum(len(task.splits[s][1]) for s in ("train", "val", "test")) == total
        assert len(task.splits["test"][1]) == pytest.approx(0.2 * total, abs=1)
        assert len(task.splits["val"][1]) == pytest.approx(0.15 * total, abs=1)
        assert _max_deviation(task.splits["test"][1].numpy(), pool) <= 1, task.name
        # val is carved out of train + val, stratified again: within one example of what remained.
        rest = np.concatenate([task.splits["train"][1].numpy(), task.splits["val"][1].numpy()])
        assert _max_deviation(task.splits["val"][1].numpy(), np.bincount(rest)) <= 1, task.name
        # train is what is left after two stratified cuts, so it can be off by one from each.
        assert _max_deviation(task.splits["train"][1].numpy(), pool) <= 2, task.name


def test_two_way_split_is_stratified_within_one_example() -> None:
    tasks = build_tasks(_split_cfg(val_fraction=0.0, test_fraction=0.3))
    for task in tasks.all:
        pool = np.bincount(all_labels(task))
        for split in ("train", "test"):
            assert _max_deviation(task.splits[split][1].numpy(), pool) <= 1, (task.name, split)


def test_split_is_fixed_by_split_seed_not_run_seed() -> None:
    first = build_tasks(_split_cfg(split_seed=3)).finetune[0]
    same = build_tasks(_split_cfg(split_seed=3, seed=99)).finetune[0]
    other = build_tasks(_split_cfg(split_seed=4)).finetune[0]
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split][0], same.splits[split][0])
        assert torch.equal(first.splits[split][1], same.splits[split][1])
    assert not torch.equal(first.splits["test"][0], other.splits["test"][0])
    assert not torch.equal(first.splits["train"][0], other.splits["train"][0])


def test_split_fractions_and_no_val_split() -> None:
    task = build_tasks(_split_cfg(val_fraction=0.0, test_fraction=0.5)).pretrain[0]
    assert len(task.splits["val"][1]) == 0
    assert abs(len(task.splits["train"][1]) - len(task.splits["test"][1])) <= 1


# --------------------------------------------------------------------------------------------- transforms


def test_permute_is_one_fixed_permutation() -> None:
    x = load_source("digits").x[:50]
    a, b = permute_features(x, seed=3), permute_features(x, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    assert not np.array_equal(a, permute_features(x, seed=4))
    assert not np.array_equal(a, x)
    # One permutation of the 64 features, the same for every example.
    order = permute_features(np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8), seed=3).ravel().astype(int)
    assert sorted(order) == list(range(64))
    np.testing.assert_array_equal(a.reshape(50, -1), x.reshape(50, -1)[:, order])
    # Each example keeps its multiset of feature values.
    np.testing.assert_array_equal(np.sort(a.reshape(50, -1), axis=1), np.sort(x.reshape(50, -1), axis=1))


def test_permute_transform_in_a_task_keeps_the_split() -> None:
    tasks = build_tasks(
        config(
            [{"name": "plain", "source": "digits"}],
            [{"name": "perm", "source": "digits", "transform": {"kind": "permute", "seed": 5}}],
        )
    )
    plain, perm = tasks.pretrain[0], tasks.finetune[0]
    for split in ("train", "test"):
        assert torch.equal(plain.splits[split][1], perm.splits[split][1])
        expected = permute_features(plain.splits[split][0].numpy(), seed=5)
        np.testing.assert_array_equal(perm.splits[split][0].numpy(), expected)


def test_rotate_90_equals_rot90_counter_clockwise() -> None:
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    rotated = rotate_images(x, 90)
    np.testing.assert_allclose(rotated, np.rot90(x, k=1, axes=(-2, -1)), atol=1e-5)
    # Direction, spelled out: the top-right pixel moves to the top-left corner.
    dot = np.zeros((1, 1, 8, 8), dtype=np.float32)
    dot[0, 0, 0, 7] = 1.0
    assert np.argwhere(rotate_images(dot, 90)[0, 0] > 0.5).tolist() == [[0, 0]]
    np.testing.assert_allclose(rotate_images(x, 180), np.rot90(x, k=2, axes=(-2, -1)), atol=1e-5)


def test_rotate_transform_in_a_task() -> None:
    tasks = build_tasks(
        config(
            [{"name": "plain", "source": "digits"}],
            [{"name": "rot", "source": "digits", "transform": {"kind": "rotate", "degrees": 90}}],
        )
    )
    plain, rot = tasks.pretrain[0], tasks.finetune[0]
    x = plain.splits["test"][0].numpy()
    np.testing.assert_allclose(rot.splits["test"][0].numpy(), np.rot90(x, k=1, axes=(-2, -1)), atol=1e-5)


def test_rotate_on_a_non_image_source_is_a_config_error() -> None:
    cfg = config(
        [{"name": "a", "source": "mnist1d", "classes": [0, 1, 2, 3, 4]}],
        [{"name": "b", "source": "mnist1d", "transform": {"kind": "rotate", "degrees": 90}}],
        data={"mnist1d_samples": 500},
    )
    with pytest.raises(ConfigError, match=r"finetune\.tasks\[0\]\.transform.*rotate"):
        check(cfg)


# --------------------------------------------------------------------------------------------- head mapping


def _coded_npz(path: Path, names: list[str], per_class: int = 6) -> Path:
    """Every example's features encode its class: x = 10 * (position of its label in ``names``)."""
    y = np.repeat(np.array(names), per_class)
    code = np.repeat(np.arange(len(names)), per_class).astype(np.float32)
    x = np.tile(code[:, None] * 10.0, (1, 4)) + np.linspace(0, 1, len(y), dtype=np.float32)[:, None]
    np.savez(path, x=x, y=y)
    return path


def _class_of(x: torch.Tensor, names: list[str]) -> list[str]:
    """Decode each example's true class from its features (see ``_coded_npz``)."""
    return [names[c] for c in (x[:, 0] // 10).long().tolist()]


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_head_label_mapping(heads: str, tmp_path: Path) -> None:
    names = ["ant", "bee", "cat", "dog"]
    path = str(_coded_npz(tmp_path / "coded.npz", names))
    cfg = config(
        [{"name": "old", "source": "npz", "path": path, "classes": ["ant", "bee"]}],
        [{"name": "new", "source": "npz", "path": path, "classes": ["dog", "bee"]}],  # task's own order
        model={"heads": heads},
    )
    with pytest.warns(SharedExamplesWarning, match=r"\['bee'\]"):  # meant here: one class in two tasks
        tasks = build_tasks(cfg)
    old, new = tasks.pretrain[0], tasks.finetune[0]
    if heads == "per_task":
        assert (old.head, new.head) == ("old", "new")
        assert tasks.head_sizes == {"old": 2, "new": 2}
        expected_old = {"ant": 0, "bee": 1}
        expected_new = {"dog": 0, "bee": 1}
    else:
        assert old.head == new.head == SHARED_HEAD
        assert tasks.head_sizes == {SHARED_HEAD: 3}  # union: ant, bee, dog (bee shared)
        expected_old = {"ant": 0, "bee": 1}
        expected_new = {"dog": 2, "bee": 1}
    assert new.classes == ("dog", "bee")
    for task, expected in ((old, expected_old), (new, expected_new)):
        for split in ("train", "val", "test"):
            x, y = task.splits[split]
            classes = _class_of(x, names)
            assert [expected[c] for c in classes] == y.tolist()


def test_shared_head_on_split_and_rotated_digits() -> None:
    split = build_tasks(
        config(
            [{"name": "a", "source": "digits", "classes": [0, 1, 2, 3, 4]}],
            [{"name": "b", "source": "digits", "classes": [5, 6, 7, 8, 9]}],
            model={"heads": "shared"},
        )
    )
    assert split.head_sizes == {SHARED_HEAD: 10}
    assert set(all_labels(split.pretrain[0])) == set(range(5))
    assert set(all_labels(split.finetune[0])) == set(range(5, 10))
    # Same source, same class names: one output per digit, rotated or not.
    rotated = build_tasks(
        config(
            [{"name": "a", "source": "digits"}],
            [{"name": "b", "source": "digits", "transform": {"kind": "rotate", "degrees": 90}}],
            model={"heads": "shared"},
        )
    )
    assert rotated.head_sizes == {SHARED_HEAD: 10}
    assert torch.equal(rotated.pretrain[0].splits["test"][1], rotated.finetune[0].splits["test"][1])


def test_tasks_must_share_an_input_shape() -> None:
    cfg = config(
        [{"name": "a", "source": "digits"}], [{"name": "b", "source": "mnist1d"}], data={"mnist1d_samples": 500}
    )
    with pytest.raises(ConfigError, match="input shape"):
        build_tasks(cfg)


# --------------------------------------------------------------------------------------------- user data


def test_npz_with_int_labels_and_uint8_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 5, 5), dtype=np.uint8)
    y = np.array([2, 0, 7] * 4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_source("npz", str(tmp_path / "d.npz"), scale=255)  # 8-bit pixels, scaled because asked to
    assert data.x.shape == (12, 1, 5, 5) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x[:, 0], x / 255.0, rtol=1e-6)
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert data.class_names == ("0", "2", "7")
    assert data.y.tolist() == [1, 0, 2] * 4
    np.testing.assert_array_equal(load_source("npz", str(tmp_path / "d.npz")).x[:, 0], x)  # default: as stored


def _table_npz(path: Path) -> Path:
    """A tabular file with integer features (age in years, income in euros) and labels 0..3."""
    rng = np.random.default_rng(3)
    x = np.stack([rng.integers(18, 90, 80), rng.integers(10_000, 90_000, 80)], axis=1).astype(np.int64)
    np.savez(path, x=x, y=np.repeat([0, 1, 2, 3], 20))
    return path


def _npz_task(name: str, path: Path, classes: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "npz", "path": str(path), "classes": classes, **extra}


def _all_x(task) -> np.ndarray:
    return np.concatenate([task.splits[s][0].numpy() for s in ("train", "val", "test")])


def test_integer_npz_features_are_used_as_stored(tmp_path: Path) -> None:
    # Regression: integer x used to be divided by 255 as if it were pixels, silently rescaling tabular data.
    path = _table_npz(tmp_path / "table.npz")
    tasks = build_tasks(config([_npz_task("a", path, [0, 1])], [_npz_task("b", path, [3, 2])]))
    stored = np.load(path)["x"]
    rows = {tuple(r) for r in stored.astype(np.float32)}
    for task in tasks.all:
        assert {tuple(r) for r in _all_x(task)} <= rows
    assert _all_x(tasks.pretrain[0]).max() > 1000  # incomes in euros, not euros / 255


def test_npz_scale_divides_x_per_task(tmp_path: Path) -> None:
    path = _table_npz(tmp_path / "table.npz")
    cfg = config([_npz_task("scaled", path, [0, 1], scale=255)], [_npz_task("raw", path, [1, 2])])
    assert cfg.pretrain.tasks[0].scale == 255.0 and cfg.finetune.tasks[0].scale is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # class 1 is in both, in two scales: a shift, not an accident
        tasks = build_tasks(cfg)
    scaled, raw = tasks.pretrain[0], tasks.finetune[0]
    stored = np.load(path)["x"].astype(np.float64)
    # Each task gets its own scaling of the one file: neither sees the other's array.
    assert {tuple(r) for r in _all_x(scaled)} <= {tuple(r) for r in (stored / 255).astype(np.float32)}
    assert {tuple(r) for r in _all_x(raw)} <= {tuple(r) for r in stored.astype(np.float32)}
    # Class 1's test examples are the same examples in both tasks, 255 times apart.
    one_scaled = scaled.splits["test"][0][scaled.splits["test"][1] == 1].numpy()
    one_raw = raw.splits["test"][0][raw.splits["test"][1] == 0].numpy()
    np.testing.assert_allclose(one_scaled * 255, one_raw, rtol=1e-6)


def test_scale_is_part_of_the_run_id_and_the_pretraining_cache_key(tmp_path: Path) -> None:
    path = _table_npz(tmp_path / "table.npz")
    keys = []
    for scale in (None, 255):
        cfg = config([_npz_task("a", path, [0, 1], scale=scale)], [_npz_task("b", path, [3, 2])])
        keys.append((run_id(cfg, content_fingerprints(cfg)), pretrain_key(cfg, build_tasks(cfg))))
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"source": "digits"}, "only npz sources take a scale (built-in sources come scaled); source 'digits'"),
        ({"source": "mnist1d"}, "only npz sources take a scale"),
        ({"source": "folder", "path": "imgs"}, "folder images are always scaled to [0, 1]"),
        ({"source": "npz", "path": "d.npz", "scale": 0}, "must be a positive number"),
        ({"source": "npz", "path": "d.npz", "scale": -255}, "or null to use x as stored"),
        ({"source": "npz", "path": "d.npz", "scale": "uint8"}, "got 'uint8'"),
        ({"source": "npz", "path": "d.npz", "scale": True}, "must be a positive number"),
        ({"source": "npz", "path": "d.npz", "scale": float("inf")}, "must be a positive number"),
    ],
)
def test_scale_where_it_cannot_apply_is_a_config_error(task: dict[str, Any], message: str) -> None:
    raw = {"name": "a", "classes": [0, 1], "scale": 255, **task}
    with pytest.raises(ConfigError) as info:
        config([raw], [{"name": "b", "source": "digits"}])
    assert str(info.value).startswith("pretrain.tasks.0.scale: ")
    assert message in str(info.value)


def test_scale_override_on_a_built_in_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^finetune\.tasks\.0\.scale: only npz sources"):
        load_config(EXPERIMENTS / "split_digits.yaml", ["finetune.tasks.0.scale=255"])


def test_npz_with_string_labels_and_float_features(tmp_path: Path) -> None:
    x = np.linspace(-3, 3, 24, dtype=np.float64).reshape(6, 4)
    y = np.array(["zebra", "apple", "zebra", "mango", "apple", "mango"])
    np.savez(tmp_path / "s.npz", x=x, y=y)
    data = load_source("npz", str(tmp_path / "s.npz"))
    assert data.class_names == ("apple", "mango", "zebra")
    assert data.y.tolist() == [2, 0, 2, 1, 0, 1]
    assert data.x.shape == (6, 4) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, x, rtol=1e-6)  # float features are not rescaled


def test_npz_with_explicit_class_names(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "n.npz",
        x=np.zeros((4, 3), np.float32),
        y=np.array(["b", "a", "b", "a"]),
        class_names=np.array(["b", "a"]),
    )
    data = load_source("npz", str(tmp_path / "n.npz"))
    assert data.class_names == ("b", "a")
    assert data.y.tolist() == [0, 1, 0, 1]


def test_npz_class_names_as_an_index_to_name_map(tmp_path: Path) -> None:
    # scikit-learn's convention: y holds 0..K-1 and class_names[i] names class i. Refused before.
    names = ["cat", "dog", "eel"]
    y = np.repeat([0, 1, 2], 8)
    x = np.repeat(np.arange(3), 8)[:, None] * 10.0 + np.zeros((1, 4))  # features encode the true class
    np.savez(tmp_path / "sk.npz", x=x, y=y, class_names=np.array(names))
    data = load_source("npz", str(tmp_path / "sk.npz"))
    assert data.class_names == ("cat", "dog", "eel")
    assert data.y.tolist() == y.tolist()
    tasks = build_tasks(
        config(
            [_npz_task("a", tmp_path / "sk.npz", ["eel", "cat"])],
            [_npz_task("b", tmp_path / "sk.npz", ["dog", "cat"], transform={"kind": "permute", "seed": 1})],
        )
    )
    task = tasks.pretrain[0]
    assert task.classes == ("eel", "cat")
    for split in ("train", "val", "test"):
        x_split, y_split = task.splits[split]
        assert [task.classes[k] for k in y_split.tolist()] == [names[c] for c in (x_split[:, 0] // 10).long().tolist()]


def test_npz_class_names_that_are_label_values_are_read_as_label_values(tmp_path: Path) -> None:
    # Integer y and names that are label values fit both readings; the label-value reading wins: y == 0 is "0".
    y = np.array([0, 1, 1, 0, 1, 0])
    np.savez(tmp_path / "amb.npz", x=np.zeros((6, 2)), y=y, class_names=np.array(["1", "0"]))
    data = load_source("npz", str(tmp_path / "amb.npz"))
    assert data.class_names == ("1", "0")
    assert [data.class_names[k] for k in data.y] == [str(v) for v in y]


def test_npz_label_values_may_leave_some_names_unused(tmp_path: Path) -> None:
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 2)), y=np.array([3, 7, 7, 3]), class_names=np.array([9, 7, 3]))
    data = load_source("npz", str(tmp_path / "n.npz"))
    assert data.class_names == ("9", "7", "3")
    assert data.y.tolist() == [2, 1, 1, 2]


@pytest.mark.parametrize(
    ("y", "names", "message"),
    [
        (np.array(["a", "b", "c", "a"]), ["a", "b"], r"y holds labels \['c'\] that are not in class_names$"),
        (np.array([0, 1, 2, 5]), ["x", "y", "z"], r"and integers 0\.\.5, not all within 0\.\.2$"),
        (np.array([-1, 0, 1, 0]), ["x", "y"], r"integers -1\.\.1"),
        (np.array([0.0, 1.0, 0.0, 1.0]), ["x", "y"], r"labels \['0\.0', '1\.0'\]"),
    ],
)
def test_npz_labels_that_fit_neither_reading_of_class_names(
    y: np.ndarray, names: list[str], message: str, tmp_path: Path
) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((len(y), 2)), y=y, class_names=np.array(names))
    with pytest.raises(ConfigError, match=message) as info:
        load_source("npz", str(tmp_path / "bad.npz"))
    text = str(info.value)
    assert "fits neither reading of class_names" in text and "the names themselves" in text
    assert "integer indices 0.." in text and "scikit-learn" in text


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 2))}, "needs arrays 'x' and 'y'"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, "must match"),
        ({"x": np.zeros((3, 2)), "y": np.zeros((3, 1))}, r"y must be one label per example, shape \(N,\)"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "class_names": np.array(["a", "a", "b"])}, "duplicates"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "class_names": np.array([], dtype=str)}, "is empty"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "class_names": np.array([["a", "b"]])}, "shape \\(K,\\)"),
    ],
)
def test_bad_npz_is_a_config_error(arrays: dict[str, np.ndarray], message: str, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ConfigError, match=message):
        load_source("npz", str(tmp_path / "bad.npz"))


def test_missing_npz_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_source("npz", str(tmp_path / "missing.npz"))


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def test_image_folder_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = {}
    for cls, count in (("cats", 3), ("dogs", 2)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            img = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
            _png(tmp_path / cls / f"{i}.png", img)
            pixels[(cls, i)] = img
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    data = load_source("folder", str(tmp_path))
    assert data.class_names == ("cats", "dogs")
    assert data.x.shape == (5, 1, 6, 5) and data.x.dtype == np.float32
    assert data.y.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(data.x[0, 0], pixels[("cats", 0)] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.x[4, 0], pixels[("dogs", 1)] / 255.0, rtol=1e-6)


def test_image_folder_colour(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        _png(tmp_path / cls / "x.png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
    data = load_source("folder", str(tmp_path))
    assert data.x.shape == (2, 3, 4, 4)


def test_image_folder_with_mixed_sizes_is_a_config_error(tmp_path: Path) -> None:
    for cls, size in (("a", 4), ("b", 5)):
        (tmp_path / cls).mkdir()
        _png(tmp_path / cls / "x.png", np.zeros((size, size), np.uint8))
    with pytest.raises(ConfigError, match="differ in size"):
        load_source("folder", str(tmp_path))


def test_empty_image_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no class sub-folders"):
        load_source("folder", str(tmp_path))


def test_run_end_to_end_on_an_npz_source(tmp_path: Path) -> None:
    digits = load_source("digits")
    x = np.round(digits.x[:, 0] * 255).astype(np.uint8)  # (N, 8, 8) 8-bit images
    y = np.array([f"d{v}" for v in digits.y])
    path = tmp_path / "my_digits.npz"
    np.savez(path, x=x, y=y)
    cfg = validate_config(
        {
            "out": str(tmp_path / "runs"),
            "model": {"hidden": [32]},
            "pretrain": {
                "tasks": [
                    {
                        "name": "low",
                        "source": "npz",
                        "path": str(path),
                        "classes": ["d0", "d1", "d2", "d3", "d4"],
                        "scale": 255,
                    }
                ],
                "train": {"epochs": 5, "batch_size": 32},
            },
            "finetune": {
                "tasks": [
                    {
                        "name": "high",
                        "source": "npz",
                        "path": str(path),
                        "classes": ["d5", "d6", "d7", "d8", "d9"],
                        "scale": 255,
                    }
                ]
            },
            "train": {"epochs": 1, "batch_size": 32},
            "eval": {"every_n_steps": 5},
            "logging": {"wandb": "disabled", "progress": False},
        }
    )
    result = run(cfg)
    assert result.summary["status"] == "completed"
    assert result.summary["tasks"]["high"]["classes"] == ["d5", "d6", "d7", "d8", "d9"]
    metrics = result.metrics
    step0 = metrics[(metrics.step == 0) & (metrics.metric == "acc")]
    assert set(step0.task) == {"low", "high"}
    assert step0.set_index("task").value["low"] > 0.8  # pretraining learned the npz data
    assert np.isfinite(metrics.value).all()


# --------------------------------------------------------------------------------------------- shared examples


def _digits_task(name: str, classes: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "digits", **({"classes": classes} if classes else {}), **extra}


def test_tasks_sharing_classes_share_examples_and_say_so() -> None:
    cfg = config([_digits_task("low", [0, 1, 2, 3, 4])], [_digits_task("mid", [3, 4, 5, 6])])
    with pytest.warns(SharedExamplesWarning) as caught:
        tasks = build_tasks(cfg)
    assert len(caught) == 1
    message = str(caught[0].message)
    for part in ("'low' and 'mid'", "['3', '4']", "source 'digits', untransformed", "same examples", "train included"):
        assert part in message, part
    # What the warning is about: the very same training images of 3 and 4 in both tasks.
    low, mid = tasks.pretrain[0], tasks.finetune[0]
    low_x, low_y = low.splits["train"]
    mid_x, mid_y = mid.splits["train"]
    torch.testing.assert_close(low_x[low_y >= 3], mid_x[mid_y <= 1])


@pytest.mark.parametrize(
    ("tasks", "pairs"),
    [
        ([_digits_task("all"), _digits_task("high", [5, 6, 7, 8, 9])], [("all", "high")]),
        (
            [_digits_task("a", [0, 1, 2]), _digits_task("b", [2, 3]), _digits_task("c", [3, 4])],  # a sequence
            [("a", "b"), ("b", "c")],
        ),
        (
            [
                _digits_task("a", [1, 2], transform={"kind": "permute", "seed": 4}),
                _digits_task("b", [2, 3], transform={"kind": "permute", "seed": 4, "degrees": 30}),  # degrees unused
            ],
            [("a", "b")],
        ),
    ],
    ids=["all-then-some", "overlapping-sequence", "same-permutation"],
)
def test_shared_examples_warning_for_each_pair(tasks: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> None:
    with pytest.warns(SharedExamplesWarning) as caught:
        build_tasks(config(tasks[:1], tasks[1:]))
    assert [str(w.message).split(" both take")[0] for w in caught] == [
        f"shared examples: tasks '{a}' and '{b}'" for a, b in pairs
    ]


def test_permuted_or_rotated_copies_are_a_domain_shift_not_a_warning(tmp_path: Path) -> None:
    path = _table_npz(tmp_path / "table.npz")
    configs = [
        config([_digits_task("a")], [_digits_task("b", transform={"kind": "rotate", "degrees": 90})]),
        config([_digits_task("a")], [_digits_task("b", transform={"kind": "permute", "seed": 1})]),
        config(
            [_digits_task("a", transform={"kind": "rotate", "degrees": 90})],
            [_digits_task("b", transform={"kind": "rotate", "degrees": 180})],
        ),
        config([_npz_task("a", path, [0, 1])], [_npz_task("b", path, [0, 1], scale=10)]),
        config([_digits_task("a", [0, 1, 2, 3, 4])], [_digits_task("b", [5, 6, 7, 8, 9])]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in configs:
            build_tasks(cfg)


def test_one_file_by_two_spellings_of_its_path_is_one_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _table_npz(tmp_path / "table.npz")
    monkeypatch.chdir(tmp_path)
    cfg = config([_npz_task("a", Path("table.npz"), [0, 1])], [_npz_task("b", tmp_path / "table.npz", [1, 2])])
    with pytest.warns(SharedExamplesWarning, match=r"'a' and 'b' both take classes \['1'\]"):
        build_tasks(cfg)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_experiments_share_no_examples_by_accident(experiment: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_tasks(load_config(experiment))


# --------------------------------------------------------------------------------------------- batches


def test_tensor_batches_are_seeded_and_cover_every_example() -> None:
    x = torch.arange(10)
    first = [b[0].tolist() for b in TensorBatches(x, batch_size=4, seed=1)]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(i for b in first for i in b) == list(range(10))
    batches = TensorBatches(x, batch_size=4, seed=1)
    assert [b[0].tolist() for b in batches] == first
    assert [b[0].tolist() for b in batches] != first  # a new order each epoch
    assert [b[0].tolist() for b in TensorBatches(x, batch_size=4, seed=2)] != first
