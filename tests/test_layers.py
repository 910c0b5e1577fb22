"""The package's layers import only downward: no cycles, no sibling imports.

Every ``import`` in ``specbench/`` (lazy ones inside functions too) is mapped to the layer
of the module it names; a module may import its own layer's package or lower layers only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "specbench"
# bottom to top; a layer may use anything below it (README, "Layout")
LAYERS = [
    {"io", "schema", "acceptance"},  # file writes, settings base class, α = Σ min(p, q)
    {"artifacts"},  # the typed files that pass between stages, and their path names
    {"dist"},  # process groups and lockstep helpers for multi-rank jobs
    {"losses", "features"},  # loss functions; the feature-cache format and draft vocabulary
    {"targets"},  # loading and running target models
    {"data"},  # prompts, domains, splits, response generation
    {"drafts"},  # draft architectures and their alignment with target quantities
    {"training", "decoding", "formats"},  # trainer; decoding, τ estimators; checkpoint formats
    {"aggregation"},  # tables, statistics, plots, paper figures
    {"serving"},  # exported drafts served by vLLM (its own venv, run in a subprocess)
    {"config"},  # the experiment matrix, which names everything below
    {"plan"},  # GPU memory per job, traced from the code below at real shapes
    {"jobs"},  # the pipeline's stages
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit(module: str) -> str:
    """``specbench.targets.info`` → ``targets``; ``specbench.io`` → ``io``."""
    return module.split(".")[1]


def edges() -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported unit) for every specbench import."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) < 2:
            continue  # specbench/__init__.py
        here = parts[1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: stays inside its own package
                    continue
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("specbench.") and name != "specbench":
                    out.append((str(rel), here, unit(name)))
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.name != "__pycache__"}
    units -= {"__init__"}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


def test_imports_go_down():
    found = edges()
    assert len(found) > 50, "the import scan found too little: is the package where it was?"
    wrong = [
        f"{path}: {here!r} imports {there!r}"
        for path, here, there in found
        if here != there and RANK[there] >= RANK[here]
    ]
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_every_extension_kind_names_its_file_and_an_existing_test():
    """README, "Extending specbench": one row per kind of component, each naming the file it
    takes and tests that exist."""
    readme = (ROOT.parent / "README.md").read_text()
    table = readme.split("## Extending specbench", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| a")]
    kinds = [r[0].removeprefix("| ") for r in rows]
    assert kinds == [
        "a loss", "a per-row statistic", "an architecture", "a checkpoint format",
        "a τ estimator", "a domain", "a target",
    ]  # fmt: skip
    for row in rows:
        tests = re.findall(r"tests/[\w/]+\.py", row[-1])
        assert tests, row[0]
        assert all((ROOT.parent / t).is_file() for t in tests), (row[0], tests)
