"""Training: the generic LightningModule, the pretraining and fine-tuning stages, and ``run(cfg)``."""

from research.training.run import RunResult, check, pretrain_only, run

__all__ = ["RunResult", "check", "pretrain_only", "run"]
