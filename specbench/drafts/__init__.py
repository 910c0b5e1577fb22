"""Draft architectures; importing this package registers all of them with ``build_draft``.

Registry names: ``eagle3``, ``medusa``, ``mlp_speculator``, ``mtp``, ``block_diffusion``.
"""

from specbench.drafts import (  # noqa: F401  (imported for their @register_draft)
    block_diffusion,
    eagle3,
    medusa,
    mlp_speculator,
    mtp,
)
from specbench.drafts.base import DRAFTS, Draft, build_draft, load_draft
from specbench.targets.info import TargetInfo

__all__ = ["DRAFTS", "Draft", "TargetInfo", "build_draft", "load_draft"]
