"""Draft-training losses, by name: ``build("lk_lambda(eta=10)")`` returns a callable.

``loss = build(spec)(draft_logits=[N,K,V], target_logits=[N,K,V], mask=[N,K], labels=[N,K])``
returns ``Σ_k w_k·L_k (+ block terms)``; see :mod:`specbench.losses.core`. The targets may also
be :class:`IndexedRows` (rows of a batch by index, gathered a chunk at a time:
:mod:`specbench.losses.rows`). Spec grammar in
:mod:`specbench.losses.spec`; names and parameters: :func:`available`.

One module per base loss, named after it (``kl.py`` holds ``kl``); the position weightings
and block terms are in ``weighting.py``. Adding a loss is one file with a
``@register_loss("name")`` function plus its module in the import line below, whose order
is the registration order and so the canonical order of terms in a spec label.
"""

# registration, in canonical order
from . import kl, tv, lk_alpha, lk_lambda, tvdpp, ce, rkl, jsd, hellinger, weighting  # noqa: F401, I001
from .core import LossFn, Rows, build, position_mean
from .registry import LOSSES, available, canonical, register_loss
from .rows import IndexedRows, RowsLike
from .rowstats import Request, row_stats
from .spec import parse
from .weighting import suffix_survival

__all__ = [
    "LOSSES",
    "IndexedRows",
    "LossFn",
    "Request",
    "Rows",
    "RowsLike",
    "available",
    "build",
    "canonical",
    "parse",
    "position_mean",
    "register_loss",
    "row_stats",
    "suffix_survival",
]
