"""raycl: hyperparameter studies of continual-learning strategies on Ray Tune.

Subpackages load on first use so ``import raycl`` stays cheap:
``raycl.training`` (the strategy loop), ``raycl.plugins``, ``raycl.benchmarks``, ``raycl.models``,
``raycl.evaluation``, ``raycl.study`` (study files, CLI, Parquet results), ``raycl.tune`` (the only
package that imports Ray), ``raycl.analysis`` and ``raycl.report``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("training", "plugins", "benchmarks", "models", "evaluation", "study", "tune",
                "analysis", "report")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"raycl.{name}")
    raise AttributeError(f"module 'raycl' has no attribute {name!r}")
