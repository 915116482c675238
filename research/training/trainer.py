"""The Lightning Trainer both stages use, set up for short, lean runs, and the CPU threads a run computes with."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.strategies import DDPStrategy

from research.config import OptimConfig


def make_trainer(
    optim: OptimConfig, device: str, progress: ProgressBar | bool | None, callbacks: list[L.Callback]
) -> L.Trainer:
    """``progress``: the stage's display (research.training.progress); None or False for none. It goes after
    ``callbacks``, so that it shows the scores of an evaluation made at the same step."""
    display = progress if isinstance(progress, ProgressBar) else None
    # Our own logging goes through research.tracking (guarded W&B) and the run store, so Lightning's logger
    # and checkpointing are off; the per-step path stays short.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Frozen blocks are in eval mode on purpose (their BatchNorm statistics must stay pretrained).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # torch.func's per-example loop for attention kernels without a batching rule (Fisher, MAS on transformers).
    warnings.filterwarnings("ignore", message=".*There is a performance drop because we have not yet implemented.*")
    strategy: str | DDPStrategy = "auto"
    if optim.strategy == "ddp":
        # Unused trainable parameters (a head with no example in some step) must not stall the gradient sync.
        strategy = DDPStrategy(find_unused_parameters=True)  # gloo on CPUs, nccl on GPUs
    return L.Trainer(
        strategy=strategy,
        max_epochs=optim.epochs,
        max_steps=optim.max_steps or -1,
        accelerator=device,
        devices=optim.devices,
        precision=optim.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        # Without a display of our own there is none: Lightning's default would be Rich's or tqdm's bar.
        enable_progress_bar=display is not None,
        num_sanity_val_steps=0,
        callbacks=[*callbacks, display] if display is not None else callbacks,
    )


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (the run's ``threads``) while a run or pretraining works,
    then set back: the run's numbers then depend on its own setting, not on the process it happens to run in
    (a grid worker's share of the cores, a notebook's default)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
