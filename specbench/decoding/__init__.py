"""Decoding and τ estimators; importing this package registers every estimator.

Each module of the package is imported (in sorted order), so an estimator registers itself
with :func:`~specbench.decoding.estimators.register_estimator` in its own file;
``ESTIMATORS`` lists what is registered.
"""

import importlib
import pkgutil

from specbench.decoding.estimators import ESTIMATORS, Estimator, Setting, register_estimator

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["ESTIMATORS", "Estimator", "Setting", "register_estimator"]
