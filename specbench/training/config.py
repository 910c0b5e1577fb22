"""Training settings (the config's ``train:`` section), read by the trainer as they are."""

from __future__ import annotations

from pydantic import Field, model_validator

from specbench.schema import Strict


class TrainConfig(Strict):
    """AdamW with linear warm-up then cosine decay; K draft positions per anchor (``k``)."""

    k: int = Field(gt=0)
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(ge=0)
    grad_clip: float = Field(gt=0)
    # sequences per forward/backward; gradients of batch_size / micro_batch_size of them are
    # accumulated into one optimizer step (None: the whole batch at once)
    micro_batch_size: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.micro_batch_size {self.micro_batch_size} must divide "
                f"train.batch_size {self.batch_size}"
            )
        return self
