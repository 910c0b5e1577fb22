"""Run :mod:`specbench.serving.vllm_serve` in the serving venv and read its counters back.

The serving venv is ``.venv-serve`` at the repository root (``make serve-env``), or the one
``SPECBENCH_SERVE_VENV`` names. Served τ is vLLM's own count, ``1 + accepted / drafts``
(drafts = verification steps that carried draft tokens), summed per prompt from the
per-request counters vLLM returns, so its standard error is clustered by prompt like every
other τ of the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("vllm_serve.py")
REPO = Path(__file__).resolve().parents[2]
VENV_VARIABLE = "SPECBENCH_SERVE_VENV"
# architecture -> (vLLM speculative method, the export format vLLM loads). vLLM 0.32 still
# reads an MLP speculator's config but registers no model class for it ("architectures ...
# are not supported"), so our vLLM-format MLP speculator is exported, not served.
SERVED = {
    "eagle3": ("eagle3", "speculators"),
    "medusa": ("medusa", "vllm"),
    "draft_lm": ("draft_model", "transformers"),
}


# vLLM 0.32 builds MEDUSA's heads at the full vocabulary and then slices the checkpoint's to
# the truncated one, so a truncated MEDUSA fails to load (docs/vllm-t1.md); a draft LM is a
# plain causal LM over the whole vocabulary (formats/draft_lm.py)
FULL_VOCAB_ONLY = {"medusa", "draft_lm"}


def servable(arch: str, vocab: str) -> bool:
    """Whether vLLM 0.32 serves a draft of ``arch`` over the ``vocab`` draft vocabulary."""
    return arch in SERVED and (vocab == "full" or arch not in FULL_VOCAB_ONLY)


def serve_python() -> Path | None:
    """The serving venv's Python, or None where it is not installed."""
    venv = Path(os.environ.get(VENV_VARIABLE) or REPO / ".venv-serve")
    python = venv / "bin" / "python"
    return python if python.exists() and (venv / ".specbench-serve").exists() else None


def serve_env() -> dict[str, str]:
    """The subprocess environment: no project paths, no hub lookups, a small KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: faster
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the eval prompts need a few MB
    return env


def run_vllm(
    request: dict[str, Any] | list[dict[str, Any]], timeout: float = 1800.0, log: Path | None = None
) -> Any:
    """Run a request through the serving venv; its answer (``vllm_serve.respond``). A list of
    requests runs in one process, one engine after another, and is answered with a list."""
    python = serve_python()
    if python is None:
        raise FileNotFoundError(
            f"no serving venv at {REPO / '.venv-serve'} (or ${VENV_VARIABLE}): `make serve-env`"
        )
    with tempfile.TemporaryDirectory(prefix="specbench-serve-") as tmp:
        req, ans = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        req.write_text(json.dumps(request))
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
        try:
            proc = subprocess.run(
                [str(python), str(SCRIPT), str(req), str(ans)],
                env=serve_env(),
                stdout=out,
                stderr=subprocess.STDOUT if log else subprocess.PIPE,
                timeout=timeout,
                text=True,
                check=False,
            )
        finally:
            if log:
                out.close()
        if proc.returncode != 0 or not ans.exists():
            tail = Path(log).read_text()[-3000:] if log else (proc.stderr or "")[-3000:]
            raise RuntimeError(f"vLLM serving failed (exit {proc.returncode}):\n{tail}")
        return json.loads(ans.read_text())


@dataclass
class ServedPrompt:
    """One prompt's served counters at one temperature (all its samples summed)."""

    prompt_index: int
    drafts: int  # verification steps that carried draft tokens
    accepted: int  # accepted draft tokens (bonus tokens not counted)
    drafted: int  # draft tokens proposed
    reached: list[int]  # per position j: steps whose position j was verified
    accepted_at: list[int]  # per position j: steps that accepted position j
    tokens: list[list[int]]  # the generated continuation of each sample

    @property
    def tau(self) -> float:
        return 1.0 + self.accepted / self.drafts if self.drafts else float("nan")


def position_counts(accepted: list[int], drafted: list[int], k: int) -> tuple[list, list]:
    """Per-position (reached, accepted) of a sequence's steps: a step with ``a`` accepted of
    ``d`` drafted verified positions 1..min(a + 1, d) and accepted 1..a."""
    reached, acc = [0] * k, [0] * k
    for a, d in zip(accepted, drafted, strict=True):
        for j in range(min(a + 1, d)):
            reached[j] += 1
        for j in range(a):
            acc[j] += 1
    return reached, acc


def served_prompts(run: dict[str, Any], prompt_indices: list[int], k: int) -> list[ServedPrompt]:
    """One :class:`ServedPrompt` per prompt of a temperature's run in the answer."""
    out = []
    for pid, samples in zip(prompt_indices, run["prompts"], strict=True):
        steps_a = [a for s in samples for a in s["step_accepted"]]
        steps_d = [d for s in samples for d in s["step_drafted"]]
        reached, acc = position_counts(steps_a, steps_d, k)
        out.append(
            ServedPrompt(
                prompt_index=pid,
                drafts=sum(1 for d in steps_d if d > 0),
                accepted=sum(steps_a),
                drafted=sum(steps_d),
                reached=reached,
                accepted_at=acc,
                tokens=[s["tokens"] for s in samples],
            )
        )
    return out
