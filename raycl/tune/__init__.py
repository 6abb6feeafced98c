"""The Ray Tune layer: runs a planned study (``raycl.study.plan.PreparedRun``) on Ray; the only
part of raycl that starts Ray.

* :mod:`raycl.tune.runner`: :func:`run_study`, what ``python -m raycl.study`` runs.
* :mod:`raycl.tune.trainable`: the function trainable around ``raycl.study.trial.run_trial``.
* :mod:`raycl.tune.callbacks` / :mod:`raycl.tune.progress`: Parquet writing and the progress line.
* :mod:`raycl.tune.search`: Optuna search that runs every config with every seed.
* :mod:`raycl.tune.compat`: every use of Ray that is not public API.

Submodules load on first use, so ``import raycl.tune`` imports no Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_study": "runner",
    "StudyOutcome": "runner",
    "trainable": "trainable",
    "ParquetCallback": "callbacks",
    "ProgressCallback": "progress",
    "SeededOptunaSearch": "search",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raycl.tune' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raycl.tune.{module}"), name)
