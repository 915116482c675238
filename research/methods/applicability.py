"""Whether a method can run on an experiment, from what the method declares (``needs_pretraining_data``,
``records_in_pretraining``, ``supports_sequences``). One place for the reasons, so that `research run` refuses a
method (exit 2) and a grid's ``method.name: all`` leaves it out for the same reasons, in the same words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from research.methods.registry import method_class, method_names

if TYPE_CHECKING:
    from research.config import ExperimentConfig
    from research.methods.base import Method


@dataclass(frozen=True)
class Refusal:
    """Why a method cannot run here: the config key at fault, the reason (a clause after the method's name), and
    what would make a run possible."""

    method: str
    key: str
    reason: str
    remedy: str

    def message(self) -> str:
        """The one line `research run` prints: ``<key>: <method> <reason>; <remedy>``."""
        subject = self.method if self.key.startswith("method.") else f"method {self.method}"
        return f"{self.key}: {subject} {self.reason}; {self.remedy}"


def refusal(method: type[Method], cfg: ExperimentConfig) -> Refusal | None:
    """The reason ``method`` cannot run on the experiment ``cfg``, or None where it can."""
    name = method.name
    if method.records_in_pretraining is not None and cfg.pretrain.checkpoint:
        return Refusal(
            name,
            "method.name",
            "needs the pretraining trajectory, which pretrain.checkpoint does not carry",
            "leave pretrain.checkpoint empty so pretraining runs here (it is cached), or choose another method",
        )
    if method.records_in_pretraining is not None and cfg.model.external:
        return Refusal(
            name,
            "method.name",
            f"needs the trajectory of pretraining the backbone, and model.arch={cfg.model.arch} was pretrained "
            "elsewhere (here only pretraining heads are trained, on its frozen features)",
            "choose another method, e.g. ewc or mas with pretrain.tasks, or l2sp without",
        )
    reference = method.label_free_reference(cfg.method)
    abilities = [a["name"] for a in cfg.abilities]
    if reference is not None and reference not in abilities:
        return Refusal(
            name,
            "method.reference",
            f"uses the inputs of ability '{reference}', which this experiment does not have",
            f"its abilities: {', '.join(abilities) or 'none (add some under abilities)'}",
        )
    if method.needs_pretraining_data and not cfg.pretrain.tasks and reference is None:
        free = [n for n in method_names() if not method_class(n).needs_pretraining_data]
        return Refusal(
            name,
            "method.name",
            f"needs pretraining data ({method.why_pretraining_data}), and the experiment has no pretrain.tasks",
            "add some (for a loaded model, their heads are trained on its frozen features) or choose a method "
            f"that needs none: {', '.join(free)}"
            + ("; mas runs on an ability's inputs with method.reference=<ability name>" if name == "mas" else ""),
        )
    if len(cfg.finetune.tasks) > 1 and not method.supports_sequences:
        supported = [n for n in method_names() if method_class(n).supports_sequences]
        return Refusal(
            name,
            "finetune.tasks",
            f"is defined for one fine-tuning task, and finetune.tasks is a sequence of {len(cfg.finetune.tasks)}",
            f"methods that support sequences: {', '.join(supported)}",
        )
    return None
