"""What every target-running stage does first: ranks, config, target, this rank's device."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from specbench.config import Config, TargetConfig, load_config
from specbench.dist import init_distributed, rank_and_world, rank_device
from specbench.jobs import Job
from specbench.targets.loading import load_target


@dataclass
class Context:
    """A stage's view of its job: typed config, rank, world size and device."""

    job: Job
    cfg: Config
    rank: int
    world: int
    device: torch.device

    @property
    def say(self) -> Callable[..., None]:
        """``print`` on rank 0, silent elsewhere (the ranks share the rule's log)."""
        return (lambda *a, **k: print(*a, **k, flush=True)) if self.rank == 0 else _quiet

    @property
    def target_config(self) -> TargetConfig:
        return self.cfg.targets[self.job.wildcards["target"]]

    @property
    def zero3(self) -> bool:
        return self.target_config.engine == "zero3"

    def target(self) -> nn.Module:
        """The job's target: ZeRO-3 partitioned over the ranks, or a replica on this device."""
        t = self.target_config
        device = None if self.zero3 else self.device
        return load_target(self.job.params["model"], t.engine, t.dtype, t.zero3, device=device)


def _quiet(*args, **kwargs) -> None:
    pass


def start(job: Job) -> Context:
    """Join the launcher's process group (if it started several ranks) and load the config."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, job.threads // world))
    if world > 1:
        init_distributed()
    rank, world = rank_and_world()
    return Context(job, load_config(job.config), rank, world, rank_device())
