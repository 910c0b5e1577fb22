"""The experiment-matrix config: one typed model, the single source of truth for its schema.

:func:`load_config` validates a raw mapping (YAML, or Snakemake's ``config`` with
``--config`` overrides) and returns typed settings; its errors name the key and the valid
choices (registered losses, architectures and domains). Command-line list items arrive as
strings (``--config seeds=[0]``), so numeric axes are coerced. ``workflow/schemas/
config.schema.json`` is generated from these models (``python -m specbench.config``) for
editors and ``snakemake --lint``; a test keeps it in sync.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from specbench.artifacts import EXTERNAL_PREFIX, loss_slug
from specbench.data.config import DataConfig, DomainName
from specbench.data.domains import DOMAINS
from specbench.data.hub import CompletionsSource
from specbench.data.splits import eval_split
from specbench.formats import IMPORT_ARCHS
from specbench.schema import Strict
from specbench.training.config import ArchName, PerArch, TrainConfig, per_arch, per_arch_values

GGUF_PREFIX = "gguf:"
# the formats specbench.formats reads (registered in formats/<arch>.py), as a type
ImportFormat = Literal[tuple(IMPORT_ARCHS)]  # type: ignore[valid-type]


class TargetConfig(Strict):
    model: str  # hub id, local folder, or "gguf:<package>/<file>.gguf" (converted by the DAG)
    engine: Literal["hf", "zero3"] = "hf"
    # what regenerates this target's responses (stages responses, responses_shard): HF's
    # generate on the `engine` above, or vLLM in the serving venv (`make serve-env`; on a
    # cluster the CUDA `vllm` package, docs/cluster.md) with tensor parallelism over the
    # job's `gpus` and expert parallelism for MoE targets (specbench.serving.generate)
    engine_generate: Literal["hf", "vllm"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gpus: int = Field(0, ge=0)
    zero3: dict[str, Any] = Field(default_factory=dict)
    draft_archs: list[ArchName] | None = None  # None: every arch of the matrix
    # drafts per online training job (train.features: online) on this target's GPUs: one
    # number, or per architecture with a "default"; None: every (loss, seed) in one job.
    # Bounded by GPU memory: docs/cluster.md, "Online training groups"
    group_size: PerArch[int] | None = None
    # the GPU type the online training jobs ask SLURM for (``--gpus=<model>:N``): one name, or
    # per architecture with a "default"; "" = any GPU of the partition. ``python -m
    # specbench.plan`` checks each job against that GPU's memory (its ``GPU_GIB`` table)
    gpu_model: PerArch[str] = ""
    # sequences per forward/backward of this target's online training jobs, in place of
    # ``train.micro_batch_size`` (None: that one): the largest that fits, per the planner
    micro_batch_size: int | None = Field(None, gt=0)
    # hparams of an architecture on this target, over the top-level ``arch_hparams`` (e.g.
    # draft_lm's pretrained ``model``, a sibling of this target with its tokenizer)
    arch_hparams: dict[ArchName, dict[str, Any]] = Field(default_factory=dict)
    # domain → released completions of this target: its training responses of that domain are
    # read from them (rule train_completions) instead of regenerated (specbench.data.completions)
    train_completions: dict[DomainName, CompletionsSource] = Field(default_factory=dict)

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int | dict[str, int] | None) -> Any:
        if any(x < 1 for x in per_arch_values(v)):
            raise ValueError(f"group_size must be >= 1, got {v}")
        return v

    def gpu_model_for(self, arch: str) -> str:
        """The GPU type of ``arch``'s training jobs ("" = any)."""
        return per_arch(self.gpu_model, arch) or ""

    def group_size_for(self, arch: str) -> int | None:
        """Drafts per online group job of ``arch`` (None: the whole matrix row)."""
        return per_arch(self.group_size, arch)

    @property
    def is_gguf(self) -> bool:
        return self.model.startswith(GGUF_PREFIX)


class EvalConfig(Strict):
    k: PerArch[int]  # draft steps at evaluation: one number, or per arch with a "default"
    live_prompts: int = Field(ge=0)  # prompts per domain decoded live at T>0 (T=0 replays all)
    live_new_tokens: int = Field(gt=0)
    # unbiased T=1 τ (branch-verified, SPEC §4): response positions per eval prompt, a
    # seeded subset shared by every draft (None: every position)
    unbiased_anchors: int | None = Field(None, gt=0)
    bootstrap: int = Field(2000, gt=0)
    # the T=1 evaluation caches also hold the target's KV cache over every position, so the
    # unbiased estimator of each draft reads its prefix instead of prefilling it again (the
    # same numbers, ~half its time on SmolLM2-135M). Disk: num_layers·2·num_kv_heads·head_dim
    # values per token in the target's dtype, 4 bytes each in fp32: ~46 KB/token for
    # SmolLM2-135M (30·2·3·64·4). For small targets, not the paper config.
    prefix_kv: bool = False
    # served τ (issue 20, stage serve_draft): every draft vLLM serves, exported and served in
    # vLLM's speculative decoding (the serving venv, `make serve-env`) on the eval prompts;
    # at T > 0 its drafts sample with vLLM's `draft_sample_method` (docs/vllm-t1.md)
    served: bool = False
    served_draft_sampling: Literal["greedy", "probabilistic"] = "probabilistic"

    def k_for(self, arch: str) -> int:
        return int(per_arch(self.k, arch))

    def prefix_kv_for(self, split: str) -> bool:
        """Whether the cache of ``split`` holds the prefix KV: the T=1 evaluation split only
        (the one the unbiased estimator reads), and only with ``prefix_kv``."""
        return self.prefix_kv and split == eval_split(1)


class CurveConfig(Strict):
    """The learning curve (``snakemake learning_curve``): τ against training steps and data.

    One draft per point, each trained from scratch with its own cosine schedule: at every
    ``steps`` on all the training data, and at ``train.steps`` on each fraction of it.
    """

    arch: ArchName = "eagle3"
    loss: str = "kl"
    seed: int = 0
    steps: list[int] = Field(min_length=1)
    data_fractions: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("steps")
    @classmethod
    def _steps_positive(cls, v: list[int]) -> list[int]:
        if any(s < 1 for s in v):
            raise ValueError(f"learning_curve.steps must be >= 1, got {v}")
        return sorted(set(v))

    @field_validator("data_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"learning_curve.data_fractions must be in (0, 1], got {v}")
        return sorted(set(v))


class ExternalDraft(Strict):
    """A draft trained elsewhere, evaluated as a matrix entry (``loss`` = ``external:<name>``).

    ``format``: a format :func:`specbench.formats.load_external` reads; ``path``: its folder
    or hub id; ``arch``: the architecture it holds (needed where a format holds several);
    ``vocab``: what it is evaluated over: ``own`` (the checkpoint's draft vocabulary, with
    feature caches of its own), or the run's ``truncated`` / ``full`` vocabulary, which must
    then hold the same tokens as the checkpoint's (else the import refuses).
    """

    name: str
    target: str
    format: ImportFormat
    path: str
    arch: ArchName | None = None
    vocab: Literal["own", "truncated", "full"] = "own"
    note: str = ""  # e.g. the model card its published τ comes from

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError(f"external draft name {v!r}: use letters, digits, '.', '_', '-'")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_arch(cls, v: Any) -> Any:
        """A format that holds one architecture names it (speculators, sglang: eagle3)."""
        if isinstance(v, dict) and v.get("arch") is None:
            archs = IMPORT_ARCHS.get(v.get("format"), ())
            if len(archs) == 1:
                v = {**v, "arch": archs[0]}
        return v

    @model_validator(mode="after")
    def _arch(self) -> ExternalDraft:
        archs = IMPORT_ARCHS[self.format]
        if self.arch not in archs:
            raise ValueError(f"{self.name}: a {self.format} checkpoint holds one of {list(archs)}")
        return self

    @property
    def loss(self) -> str:
        return EXTERNAL_PREFIX + self.name

    @property
    def slug(self) -> str:
        """Its folder in place of a loss: ``results/drafts/<target>/<arch>/external-<name>``."""
        return loss_slug(self.loss)

    @property
    def vocab_name(self) -> str:
        """The vocabulary its caches use: the run's, or ``external-<name>`` (its own)."""
        return self.slug if self.vocab == "own" else self.vocab


class Config(Strict):
    targets: dict[str, TargetConfig]
    draft_archs: list[ArchName] = Field(min_length=1)
    losses: list[str] = Field(min_length=1)
    domains: list[DomainName] = Field(min_length=1)
    temperatures: list[Literal[0, 1]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    baseline_loss: str = "kl"
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig
    learning_curve: CurveConfig | None = None
    arch_hparams: dict[ArchName, dict[str, Any]] = Field(default_factory=dict)
    # per-architecture vocabulary overriding its reference's ("full" or "truncated" to
    # data.draft_vocab_size tokens): a stated deviation, e.g. for CPU time
    arch_vocab: dict[ArchName, Literal["truncated", "full"]] = Field(default_factory=dict)
    # per-architecture loss lists replacing ``losses`` for that architecture (each holds
    # baseline_loss), e.g. the TVD++ paper's comparison for draft_lm only
    arch_losses: dict[ArchName, list[str]] = Field(default_factory=dict)
    threads: int = Field(1, gt=0)
    # drafts trained elsewhere, evaluated beside the matrix's own (specbench.formats)
    external_drafts: list[ExternalDraft] = Field(default_factory=list)
    note: str = ""

    @field_validator("targets")
    @classmethod
    def _target_names(cls, v: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(f"target name {name!r}: use letters, digits, '.', '_', '-'")
        return v

    @field_validator("seeds", "temperatures", mode="before")
    @classmethod
    def _numbers_from_command_line(cls, v: Any) -> Any:
        """``--config seeds=[0,1]`` passes ``["0", "1"]``: read integer strings as integers."""
        if isinstance(v, list):
            return [
                int(x) if isinstance(x, str) and re.fullmatch(r"-?\d+", x.strip()) else x for x in v
            ]
        return v

    @field_validator("domains", mode="before")
    @classmethod
    def _domains(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # pydantic reports the type
        bad = [d for d in v if d not in DOMAINS]
        if bad:
            raise ValueError(f"unknown domain(s) {bad}; valid: {sorted(DOMAINS)}")
        return v

    @field_validator("losses")
    @classmethod
    def _losses(cls, v: list[str]) -> list[str]:
        from specbench.losses import canonical

        return [canonical(s) for s in v]  # raises with the valid names

    @field_validator("arch_losses")
    @classmethod
    def _arch_losses(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from specbench.losses import canonical

        empty = sorted(a for a, losses in v.items() if not losses)
        if empty:
            raise ValueError(f"arch_losses: empty list for {empty}")
        return {a: [canonical(s) for s in losses] for a, losses in v.items()}

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        from specbench.losses import canonical

        if canonical(self.baseline_loss) not in self.losses:
            raise ValueError(f"baseline_loss {self.baseline_loss!r} must be one of losses")
        for arch, losses in self.arch_losses.items():
            if canonical(self.baseline_loss) not in losses:
                raise ValueError(
                    f"arch_losses.{arch} must hold baseline_loss {self.baseline_loss!r} "
                    "(the gains are paired against it)"
                )
        if 0 in self.temperatures:
            need = self.eval.live_new_tokens + max(per_arch_values(self.eval.k))
            if need > self.data.eval_new_tokens:
                raise ValueError(
                    f"T=0 replay needs look-ahead: data.eval_new_tokens must be >= "
                    f"eval.live_new_tokens + max eval.k = {need}"
                )
        for name, t in self.targets.items():  # at load time, not when its training job starts
            if t.micro_batch_size is not None and self.train.batch_size % t.micro_batch_size:
                raise ValueError(
                    f"targets.{name}.micro_batch_size {t.micro_batch_size} must divide "
                    f"train.batch_size {self.train.batch_size}"
                )
        if self.learning_curve is not None and self.train.steps is None:
            raise ValueError("learning_curve needs train.steps (its data points train that long)")
        if self.learning_curve is not None:
            canonical(self.learning_curve.loss)  # raises with the valid names
        self._check_training_domains()
        names = [e.name for e in self.external_drafts]
        if len(set(names)) != len(names):
            raise ValueError(f"external_drafts: names must be unique, got {names}")
        for e in self.external_drafts:
            if e.target not in self.targets:
                raise ValueError(
                    f"external_drafts.{e.name}: unknown target {e.target!r}; "
                    f"valid: {sorted(self.targets)}"
                )
        return self

    def _check_training_domains(self) -> None:
        per_domain = self.data.train_prompts_per_domain
        if isinstance(per_domain, dict):
            unlisted = [d for d in self.domains if d not in per_domain]
            if unlisted:
                raise ValueError(
                    f"data.train_prompts_per_domain: no entry for domain(s) {unlisted} "
                    "(0: the domain contributes no training prompts)"
                )
            if not self.train_domains:
                raise ValueError("data.train_prompts_per_domain: every domain has 0 prompts")
        for name, t in self.targets.items():
            for domain in t.train_completions:
                if domain not in self.train_domains:
                    raise ValueError(
                        f"targets.{name}.train_completions.{domain}: {domain} has no training "
                        f"prompts (domains with some: {self.train_domains})"
                    )

    @property
    def train_domains(self) -> list[str]:
        """The domains that contribute training prompts (all, unless some ask for 0)."""
        return [d for d in self.domains if self.data.train_prompts(d) > 0]

    def completions(self, target: str, domain: str) -> CompletionsSource | None:
        """The released completions that replace regeneration for (target, domain), if any."""
        return self.targets[target].train_completions.get(domain)

    def vocab_for(self, arch: str) -> str:
        """The draft vocabulary an architecture trains over: its reference's, or the override."""
        from specbench.drafts import DRAFTS

        return self.arch_vocab.get(arch, DRAFTS[arch].reference_vocab)

    def vocabs_for(self, target: str) -> list[str]:
        """The vocabularies the architectures of ``target`` need caches for."""
        return sorted({self.vocab_for(a) for a in self.archs_for(target)})

    def hparams_for(self, target: str, arch: str) -> dict[str, Any]:
        """``arch``'s hparams on ``target``: ``arch_hparams``, then the target's own."""
        return {
            **self.arch_hparams.get(arch, {}),
            **self.targets[target].arch_hparams.get(arch, {}),
        }

    def losses_for(self, arch: str) -> list[str]:
        """The losses ``arch`` trains with: its ``arch_losses`` entry, else ``losses``."""
        return self.arch_losses.get(arch, self.losses)

    @property
    def all_losses(self) -> list[str]:
        """Every loss some architecture trains with (``losses`` first, in order)."""
        extra = [x for losses in self.arch_losses.values() for x in losses]
        return list(dict.fromkeys([*self.losses, *extra]))

    def train_groups(self, target: str, arch: str) -> list[list[tuple[str, int]]]:
        """The (loss, seed) drafts of one (target, architecture), in online group jobs.

        Every (loss, seed) of the architecture in order, cut into groups of the target's
        ``group_size`` for ``arch`` (all of them in one group when it is unset).
        """
        runs = [(loss, seed) for loss in self.losses_for(arch) for seed in self.seeds]
        size = self.targets[target].group_size_for(arch) or len(runs)
        return [runs[i : i + size] for i in range(0, len(runs), size)]

    def train_for(self, target: str) -> TrainConfig:
        """``train`` as ``target``'s online jobs run it (its ``micro_batch_size``, if set)."""
        micro = self.targets[target].micro_batch_size
        if micro is None:
            return self.train
        return TrainConfig.model_validate({**self.train.model_dump(), "micro_batch_size": micro})

    def archs_for(self, target: str) -> list[str]:
        only = self.targets[target].draft_archs
        return [a for a in self.draft_archs if only is None or a in only]


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
            elif e["type"] == "literal_error":  # a registry's name (arch, format, ...)
                msg += f", got {e['input']!r}"
            lines.append(f"  {where}: {msg}")
        raise ConfigError("invalid specbench config:\n" + "\n".join(lines)) from None


def json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`Config` (what ``workflow/schemas/config.schema.json`` holds)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "specbench experiment matrix; generated from specbench.config (python -m "
        "specbench.config > workflow/schemas/config.schema.json): edit the models, not this file"
    )
    return schema


if __name__ == "__main__":
    import json

    print(json.dumps(json_schema(), indent=1))
