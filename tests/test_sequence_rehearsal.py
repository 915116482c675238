"""LwF, A-GEM, DER and DER++ on a fine-tuning sequence, through real runs of experiments/sequence_digits.yaml
(pretraining on digits 0-3, then 4-6, then 7-9): LwF's teacher during task 2 is the model at the task boundary
and it distils every earlier head (or every earlier class's output of a shared head); after task 1 the A-GEM
memory and the DER buffer hold task 1's examples, DER's with the logits of the model at the end of task 1, the
pretraining examples' logits as they were recorded, and a class-balanced buffer stays balanced over the seen
classes."""

from __future__ import annotations

import copy

import pytest
import torch

from research.methods.agem import AGEM
from research.methods.der import DER
from research.methods.lwf import LwF, distillation_loss
from research.methods.replay import Replay
from research.models.modes import eval_mode
from research.training import run
from research.training.finetune import FinetuneStage

PRETRAIN, FIRST, SECOND = "digits_0_3", "digits_4_6", "digits_7_9"


def _cfg(make_cfg, *overrides: str):
    return make_cfg("train.epochs=1", *overrides, experiment="sequence_digits.yaml")


@pytest.fixture
def boundaries(monkeypatch: pytest.MonkeyPatch) -> list:
    """The run's model at the end of each fine-tuning task (a copy taken as each task's fit returns)."""
    ends: list = []
    fit_task = FinetuneStage.fit_task

    def watched(self, index: int) -> None:
        fit_task(self, index)
        ends.append(copy.deepcopy(self.model).cpu().eval())

    monkeypatch.setattr(FinetuneStage, "fit_task", watched)
    return ends


def _rows(x: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in x.cpu().flatten(1)]


# --------------------------------------------------------------------------------------------- LwF


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_lwf_teacher_in_task_2_is_the_model_at_the_boundary_and_distils_every_earlier_head(
    heads: str, make_cfg, boundaries: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    first_teacher: list = []
    calls = [0]
    loss_terms = LwF.loss_terms

    def watched(self, model, step):
        terms = loss_terms(self, model, step)
        if self._distilled[-1]["task_index"] == 0 and not first_teacher:
            first_teacher.append(copy.deepcopy(self.teacher).cpu())
        calls[0] += self._distilled[-1]["task_index"] == 1
        if calls[0] in (1, 6, 11):  # steps 0, 5 and 10 of task 2
            seen.append(
                {
                    "teacher": copy.deepcopy(self.teacher).cpu(),
                    "x": step.batches[0].x.detach().cpu(),
                    "logits": step.logits[0].detach().cpu(),
                    "student": copy.deepcopy(model).cpu(),
                    "term": float(terms["lwf"].detach()),
                }
            )
        return terms

    monkeypatch.setattr(LwF, "loss_terms", watched)
    result = run(_cfg(make_cfg, "method.name=lwf", "method.alpha=1.0", f"model.heads={heads}"))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert len(boundaries) == 2 and len(seen) == 3
    boundary = boundaries[0]  # the model as task 1 ended, i.e. as task 2 started

    expected = {PRETRAIN: 4, FIRST: 3} if heads == "per_task" else {"shared": 7}  # 4 + 3 classes before task 2
    distilled = result.summary["method_info"]["distilled"]
    assert [d["task"] for d in distilled] == [FIRST, SECOND]
    assert distilled[0]["heads"] == ({PRETRAIN: 4} if heads == "per_task" else {"shared": 4})
    assert distilled[1]["heads"] == expected

    reference = boundary.state_dict()
    for record in seen:
        teacher = record["teacher"].state_dict()
        assert set(record["teacher"].heads) == set(expected)
        for name, value in teacher.items():  # every teacher weight is the boundary model's
            # (a shared head has grown rows for task 2's classes before the copy; they are never distilled)
            assert torch.equal(value[: len(reference[name])], reference[name]), name
    # ... which is not task 1's teacher, the pretrained model: task 1 moved the backbone.
    pretrained = first_teacher[0].backbone.state_dict()
    assert any(not torch.equal(v, seen[0]["teacher"].backbone.state_dict()[n]) for n, v in pretrained.items())

    # The term is the sum over every earlier head, computed here from the boundary model itself.
    for record in seen:
        student, x = record["student"], record["x"]
        with torch.no_grad():
            teacher_features = boundary.features(x)
            student_features = student.features(x)  # no dropout or BatchNorm here: the training forward's value
            total = 0.0
            for head, units in expected.items():
                old = boundary.heads[head](teacher_features)[:, :units]
                new = record["logits"][:, :units] if heads == "shared" else student.heads[head](student_features)
                total += float(distillation_loss(new[:, :units], old, 2.0))
        assert record["term"] == pytest.approx(total, rel=1e-5, abs=1e-7)
    assert abs(seen[0]["term"]) < 1e-6  # the student starts as the teacher ...
    assert seen[1]["term"] > 1e-6 and seen[2]["term"] > 1e-6  # ... and moves away from it


# --------------------------------------------------------------------------------------------- buffers


def _watch_prepare(monkeypatch: pytest.MonkeyPatch, cls: type, keep) -> list[dict]:
    """After every ``prepare`` of ``cls``: ``keep(method)`` (copied to the CPU), with the task index."""
    seen: list[dict] = []
    prepare = cls.prepare

    def watched(self, model, ctx):
        prepare(self, model, ctx)
        seen.append({"task_index": ctx.task_index, **keep(self)})

    monkeypatch.setattr(cls, "prepare", watched)
    return seen


def _memory(method) -> dict:
    return {
        "heads": list(method.memory.heads),
        "x": method.memory.x.detach().cpu().clone(),
        "y": method.memory.y.cpu().clone(),
        "head": method.memory.head.cpu().clone(),
    }


def _assert_holds_task_1(memory: dict, tasks_by_name: dict, size: int, selection: str, shared: bool) -> None:
    """The memory after task 1: ``size`` examples, some of task 1 (its own training examples under its own head
    index) and the rest pretraining examples; balanced over the 4 + 3 seen classes when class-balanced."""
    first_head = "shared" if shared else FIRST
    assert memory["heads"] == (["shared", "shared"] if shared else [PRETRAIN, FIRST])
    assert len(memory["y"]) == size
    newcomers = memory["head"] == 1
    assert 0 < int(newcomers.sum()) < size
    own = set(_rows(tasks_by_name[FIRST].splits["train"][0]))
    assert all(r in own for r in _rows(memory["x"][newcomers]))
    pretrain = set(_rows(tasks_by_name[PRETRAIN].splits["train"][0]))
    assert all(r in pretrain for r in _rows(memory["x"][~newcomers]))
    assert first_head in memory["heads"]
    if selection == "class_balanced":
        counts = torch.unique(memory["head"] * 100 + memory["y"], return_counts=True)[1]
        assert len(counts) == 7 and int(counts.max() - counts.min()) <= 1


def _tasks(cfg) -> dict:
    from research.data import build_tasks

    tasks = build_tasks(cfg)
    return {t.name: t for t in tasks.all}


@pytest.mark.parametrize("selection", ["reservoir", "class_balanced"])
def test_agem_memory_takes_in_task_1_as_replay_does(selection: str, make_cfg, monkeypatch) -> None:
    seen = _watch_prepare(monkeypatch, AGEM, _memory)
    cfg = _cfg(make_cfg, "method.name=agem", "method.memory_size=120", f"method.selection={selection}")
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    assert [s["task_index"] for s in seen] == [0, 1]
    assert seen[0]["heads"] == [PRETRAIN] and len(seen[0]["y"]) == 120
    _assert_holds_task_1(seen[1], _tasks(cfg), 120, selection, shared=False)
    info = result.summary["method_info"]
    assert info["memory_heads"] == [PRETRAIN, FIRST] and info["steps"] == result.summary["steps"]

    # The very examples a replay buffer of the same size and selection holds after task 1.
    buffers = _watch_prepare(monkeypatch, Replay, _memory)
    run(_cfg(make_cfg, "method.name=replay", "method.buffer_size=120", f"method.selection={selection}"))
    assert torch.equal(buffers[1]["x"], seen[1]["x"]) and torch.equal(buffers[1]["head"], seen[1]["head"])


def _der_state(method) -> dict:
    return {**_memory(method), "logits": method.logits.detach().cpu().clone(), "units": list(method.units)}


@pytest.mark.parametrize(
    ("name", "selection", "heads"),
    [("der", "reservoir", "per_task"), ("der", "class_balanced", "shared"), ("derpp", "class_balanced", "per_task")],
)
def test_der_buffer_takes_in_task_1_with_the_logits_of_its_end(
    name: str, selection: str, heads: str, make_cfg, boundaries: list, monkeypatch
) -> None:
    seen = _watch_prepare(monkeypatch, DER, _der_state)
    settings = [f"method.name={name}", "method.buffer_size=120", f"method.selection={selection}"]
    cfg = _cfg(make_cfg, *settings, f"model.heads={heads}")
    result = run(cfg)
    assert result.summary["status"] == "completed", result.summary["error"]
    assert [s["task_index"] for s in seen] == [0, 1]
    shared = heads == "shared"
    first, after = seen
    _assert_holds_task_1(after, _tasks(cfg), 120, selection, shared)
    assert first["units"] == [4] and after["units"] == [4, 3 if not shared else 7]
    assert after["logits"].shape == (120, 4 if not shared else 7)

    # Task 1's examples: the logits of the model at the end of task 1, through task 1's head as it was then.
    end = boundaries[0]
    newcomers = after["head"] == 1
    with torch.no_grad(), eval_mode(end):
        outputs = end.heads["shared" if shared else FIRST](end.features(after["x"][newcomers]))
    width = after["units"][1]
    assert outputs.shape[1] == width
    torch.testing.assert_close(after["logits"][newcomers, :width], outputs, rtol=1e-6, atol=1e-6)
    assert not after["logits"][newcomers, width:].any()

    # Pretraining examples: the logits recorded at the start (the pretrained model), carried along bit for bit,
    # not those of the model after task 1.
    recorded = dict(zip(_rows(first["x"]), first["logits"], strict=True))
    kept = ~newcomers
    for row, logits in zip(_rows(after["x"][kept]), after["logits"][kept], strict=True):
        assert torch.equal(logits[:4], recorded[row]) and not logits[4:].any()
    with torch.no_grad(), eval_mode(end):
        now = end.heads["shared" if shared else PRETRAIN](end.features(after["x"][kept]))[:, :4]
    assert (now - after["logits"][kept, :4]).abs().max() > 1e-3  # task 1 moved them: they were not recomputed
