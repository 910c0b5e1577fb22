"""Training settings (the config's ``train:`` section), read by the trainer as they are."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from specbench.drafts import DRAFTS
from specbench.schema import Strict

# names that only the draft registry knows, as types: the generated JSON schema lists them too
ArchName = Literal[tuple(sorted(DRAFTS))]  # type: ignore[valid-type]
ArchKey = Literal[(*sorted(DRAFTS), "default")]  # type: ignore[valid-type]
T = TypeVar("T")


def _default_entry(value: Any) -> Any:
    """The one check of every per-architecture setting: a mapping has a ``default``."""
    if isinstance(value, dict) and "default" not in value:
        raise ValueError("per architecture needs a 'default' entry")
    return value


# one value for every architecture, or one per architecture with a "default" for the rest
PerArch = Annotated[T | dict[ArchKey, T], AfterValidator(_default_entry)]


class TrainConfig(Strict):
    """AdamW with linear warm-up then cosine decay; K draft positions per anchor (``k``)."""

    # K draft positions per anchor: one number, or per architecture with a "default"
    k: PerArch[int]
    # how long: optimizer steps, or epochs over the training sequences (one of the two; either
    # per architecture with a "default", e.g. the paper's 10 epochs and MTP's 1-epoch fine-tune)
    steps: PerArch[int] | None = None
    epochs: PerArch[float] | None = None
    batch_size: int = Field(gt=0)
    # peak learning rate of the cosine schedule: one number, or per architecture with a
    # "default" (a short run wants a larger one for the cheap heads than for EAGLE-3's layer)
    lr: PerArch[float]
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(gt=0)
    # sequences per forward/backward; gradients of batch_size / micro_batch_size of them are
    # accumulated into one optimizer step (None: the whole batch at once)
    micro_batch_size: int | None = Field(None, gt=0)
    # training positions whose target argmax is outside the draft vocabulary: "keep" them
    # (their low α weighs on −log α) or "drop" them from the loss, as SpecForge does
    out_of_vocab: Literal["keep", "drop"] = "keep"
    # the draft's forward under torch.autocast (the losses compute in fp32 either way):
    # "auto" takes bf16 where the device computes it natively (CUDA >= 8.0, AVX512-BF16 or
    # AMX CPUs) and fp32 elsewhere, with TF32 matmuls on CUDA (specbench.training.precision);
    # an EAGLE-3 step under bf16 takes 0.61x fp32's time on an AVX512-BF16 CPU and 12.4x on
    # an AVX2-only one (benchmarks/train_step_bench.py). "bfloat16" and "none" force a choice
    autocast: Literal["auto", "bfloat16", "none"] = "auto"
    # the batch order (epochs of seeded permutations): one stream shared by every loss and
    # seed, so drafts are paired by construction (the draft's seed drives its init and draws)
    data_seed: int = 0
    # where target features come from: "cache" (written once by features_train, each draft
    # trains in its own job) or "online" (the target runs inside one job per group of
    # drafts, and one forward per batch feeds all of them: see docs/cluster.md)
    features: Literal["cache", "online"] = "cache"
    # save a group job every N optimizer steps, so a killed job resumes (0: never)
    checkpoint_every: int = Field(0, ge=0)

    @field_validator("k")
    @classmethod
    def _k_positive(cls, v: int | dict[str, int]) -> int | dict[str, int]:
        if any(x < 1 for x in per_arch_values(v)):
            raise ValueError(f"train.k must be >= 1, got {v}")
        return v

    @field_validator("steps", "epochs", "lr")
    @classmethod
    def _positive_per_arch(cls, v: Any, info: ValidationInfo) -> Any:
        if any(x <= 0 for x in per_arch_values(v)):
            raise ValueError(f"train.{info.field_name} must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set one of train.steps and train.epochs")
        return self

    def steps_for(self, arch: str, num_sequences: int) -> int:
        """Optimizer steps of one architecture's drafts on ``num_sequences`` sequences."""
        if self.steps is not None:
            return int(per_arch(self.steps, arch))
        e = per_arch(self.epochs, arch)  # type: ignore[arg-type]
        return max(1, math.ceil(e * num_sequences / self.batch_size))

    def lr_for(self, arch: str) -> float:
        """Peak learning rate of one architecture's drafts."""
        return float(per_arch(self.lr, arch))

    def k_for(self, arch: str) -> int:
        """K for one architecture (before capping at what it can draft)."""
        return int(per_arch(self.k, arch))

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.micro_batch_size {self.micro_batch_size} must divide "
                f"train.batch_size {self.batch_size}"
            )
        return self


def per_arch(value: float | dict[str, Any], arch: str) -> Any:
    """``value`` itself, or its entry for ``arch`` (else its ``"default"``)."""
    return value.get(arch, value["default"]) if isinstance(value, dict) else value


def per_arch_values(value: Any) -> list[Any]:
    """Every value a per-architecture setting holds (none for an unset one)."""
    return list(value.values()) if isinstance(value, dict) else [] if value is None else [value]
