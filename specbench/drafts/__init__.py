"""Draft architectures; importing this package registers every one with ``build_draft``.

Each module of the package is imported (in sorted order), so an architecture registers itself
with ``@register_draft("name")`` in its own file: the decorator is the only place its name is
written. ``DRAFTS`` lists what is registered.
"""

import importlib
import pkgutil

from specbench.drafts.base import DRAFTS, Draft, build_draft, load_draft
from specbench.targets.info import TargetInfo

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DRAFTS", "Draft", "TargetInfo", "build_draft", "load_draft"]
