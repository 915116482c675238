"""Training: the generic LightningModule, the pretraining and fine-tuning stages, and ``run(cfg)``."""

import os

_nvml_check = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")

import lightning  # noqa: E402, F401

# Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (a fork-safe CUDA check for its forking launchers),
# after which every ``torch.cuda.is_available()`` loads the NVML library again, and every optimizer step asks
# it once: measurable per step for small models. Nothing here forks after CUDA starts (grid workers are
# spawned), so the variable goes back to what it was, unless the user set it.
if _nvml_check is None:
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

from research.training.run import RunResult, check, pretrain_only, run  # noqa: E402

__all__ = ["RunResult", "check", "pretrain_only", "run"]
