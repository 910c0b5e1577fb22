"""The experiment-matrix config: typed, and forbidding unknown keys at every level.

Snakemake validates the raw YAML against ``workflow/schemas/config.schema.yaml`` first (shape
and types); :func:`load_config` then checks what only the code knows — registered loss and
architecture names, per-architecture limits — and returns typed settings.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from specbench.data.sources import DOMAINS

GGUF_PREFIX = "gguf:"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(Strict):
    model: str  # hub id, local folder, or "gguf:<package>/<file>.gguf" (converted by the DAG)
    engine: Literal["hf", "zero3"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gpus: int = Field(0, ge=0)
    zero3: dict[str, Any] = Field(default_factory=dict)
    draft_archs: list[str] | None = None  # None: every arch of the matrix

    @property
    def is_gguf(self) -> bool:
        return self.model.startswith(GGUF_PREFIX)


SPLITS = ("train", "eval")


class DatasetSource(Strict):
    """Where one domain's train or eval prompts come from instead of the offline default.

    ``dataset`` is a hub id (``openai/gsm8k``), a folder written by ``save_to_disk``, a folder of
    data files (e.g. a downloaded hub snapshot, whose README names the configs), or one
    ``.jsonl``/``.json``/``.parquet``/``.csv`` file. ``field`` is the text column; a chat column
    (``[{"from": "human", "value": ...}]`` or ``[{"role": "user", "content": ...}]``) gives its
    first user turn. ``filter`` keeps rows whose columns equal the given values (all of them).
    """

    dataset: str = Field(min_length=1)
    config: str | None = None  # hub config name; quote it in YAML (0625 is the number 405)
    split: str = Field("train", min_length=1)
    field: str = Field(min_length=1)
    filter: dict[str, str | int | float | bool] = Field(default_factory=dict)
    shuffle_seed: StrictInt | None = None  # None: rows in stored order (YAML true is no seed)

    @field_validator("config", mode="before")
    @classmethod
    def _config_is_text(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"config must be a string: quote it in the YAML (got {v!r})")
        return v

    def describe(self) -> str:
        """A one-line name of this source for logs and the prompts payload."""
        name = self.dataset + (f"[{self.config}]" if self.config else "")
        extra = "".join(f",{k}={v}" for k, v in self.filter.items())
        seed = "" if self.shuffle_seed is None else f",shuffle_seed={self.shuffle_seed}"
        return f"{name}:{self.split}/{self.field}{extra}{seed}"


class DataConfig(Strict):
    train_prompts_per_domain: int = Field(gt=0)
    eval_prompts_per_domain: int = Field(gt=0)
    max_prompt_tokens: int = Field(gt=0)
    train_new_tokens: int = Field(gt=0)
    eval_new_tokens: int = Field(gt=0)
    generation_batch_size: int = Field(16, gt=0)
    feature_batch_size: int = Field(8, gt=0)
    train_temperature: float = Field(1.0, ge=0)
    draft_vocab_size: int = Field(gt=0)
    # domain → split → source; a domain/split not listed keeps the offline default
    sources: dict[str, dict[str, DatasetSource]] = Field(default_factory=dict)

    @field_validator("sources", mode="before")
    @classmethod
    def _source_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic reports the type
        for domain, splits in v.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r}; valid: {list(DOMAINS)}")
            for split in splits if isinstance(splits, dict) else ():
                if split not in SPLITS:
                    raise ValueError(f"{domain}: unknown split {split!r}; valid: {list(SPLITS)}")
        return v

    def source(self, domain: str, split: str) -> DatasetSource | None:
        """The configured source of a domain's split, or None for the offline default."""
        return self.sources.get(domain, {}).get(split)


class TrainConfig(Strict):
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


class EvalConfig(Strict):
    k: dict[str, int]  # draft steps at evaluation per arch; "default" for the rest
    live_prompts: int = Field(ge=0)  # prompts per domain decoded live at T>0 (T=0 replays all)
    live_new_tokens: int = Field(gt=0)
    bootstrap: int = Field(2000, gt=0)

    def k_for(self, arch: str) -> int:
        return self.k.get(arch, self.k["default"])


class Config(Strict):
    targets: dict[str, TargetConfig]
    draft_archs: list[str] = Field(min_length=1)
    losses: list[str] = Field(min_length=1)
    domains: list[Literal["general", "code", "math"]] = Field(min_length=1)  # = DOMAINS
    temperatures: list[Literal[0, 1]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    baseline_loss: str = "kl"
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    arch_hparams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    threads: int = Field(1, gt=0)
    note: str = ""

    @field_validator("targets")
    @classmethod
    def _target_names(cls, v: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(f"target name {name!r}: use letters, digits, '.', '_', '-'")
        return v

    @field_validator("draft_archs")
    @classmethod
    def _archs(cls, v: list[str]) -> list[str]:
        from specbench.drafts import DRAFTS

        bad = [a for a in v if a not in DRAFTS]
        if bad:
            raise ValueError(f"unknown draft architecture(s) {bad}; valid: {sorted(DRAFTS)}")
        return v

    @field_validator("losses")
    @classmethod
    def _losses(cls, v: list[str]) -> list[str]:
        from specbench.losses import canonical

        return [canonical(s) for s in v]  # raises with the valid names

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        from specbench.drafts import DRAFTS
        from specbench.losses import canonical

        if canonical(self.baseline_loss) not in self.losses:
            raise ValueError(f"baseline_loss {self.baseline_loss!r} must be one of losses")
        if "default" not in self.eval.k:
            raise ValueError("eval.k needs a 'default' entry")
        if 0 in self.temperatures:
            need = self.eval.live_new_tokens + max(self.eval.k.values())
            if need > self.data.eval_new_tokens:
                raise ValueError(
                    f"T=0 replay needs look-ahead: data.eval_new_tokens must be >= "
                    f"eval.live_new_tokens + max eval.k = {need}"
                )
        for arch in self.arch_hparams:
            if arch not in DRAFTS:
                raise ValueError(f"arch_hparams: unknown arch {arch!r}; valid: {sorted(DRAFTS)}")
        for name, t in self.targets.items():
            for arch in t.draft_archs or []:
                if arch not in DRAFTS:
                    raise ValueError(f"targets.{name}.draft_archs: unknown {arch!r}")
        return self

    def archs_for(self, target: str) -> list[str]:
        only = self.targets[target].draft_archs
        return [a for a in self.draft_archs if only is None or a in only]


def loss_slug(spec: str) -> str:
    """A path-safe name for a loss spec: ``lk_lambda(eta=10)`` → ``lk_lambda-eta10``."""
    s = spec.replace("+", "__").replace("(", "-").replace(")", "").replace("=", "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s.replace(",", "_"))


class ConfigError(ValueError):
    """A config problem, phrased for the person who wrote the YAML."""


def load_config(raw: dict[str, Any]) -> Config:
    """Validate a raw config mapping; errors name the offending key and the valid choices."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "<top level>"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key (not in the schema)"
            lines.append(f"  {where}: {msg}")
        raise ConfigError("invalid specbench config:\n" + "\n".join(lines)) from None
