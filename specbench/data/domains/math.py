"""math: GSM-style word problems (GSM8K ships in no package), disjoint templates per split.

Both splits are generated (:mod:`specbench.data.math_problems`) from disjoint templates and
random streams; the paper config evaluates on GSM8K itself through ``data.sources``.
"""

from __future__ import annotations

from specbench.data.domains import Domain, register_domain
from specbench.data.math_problems import word_problems

register_domain(
    Domain(
        name="math",
        eval_source="gsm_style_generated",
        train_source="gsm_style_generated_train",
        eval_prompts=lambda n: [p.question for p in word_problems(n, stream="eval")],
        train_prompts=lambda n, seed: [
            p.question for p in word_problems(n, stream="train", seed=seed)
        ],
    )
)
