"""Studies: the study file format, its validation, the trial runner and the Parquet results.

A study file defines ``study = Study(...)`` (see :mod:`raycl.study.spec`); ``python -m
raycl.study STUDY_FILE`` validates it, runs it on Ray Tune and writes ``trials.parquet``,
``matrix.parquet`` and ``curves.parquet`` under ``<storage>/<study name>/``. Nothing here imports
Ray except what needs Tune domains (the loader's space checks import ``ray.tune``, which starts
nothing); running trials is :mod:`raycl.tune`'s job.
"""

from __future__ import annotations

import importlib
from typing import Any

from raycl.study.spec import (
    BENCHMARKS,
    MODELS,
    OPTIMIZERS,
    Arm,
    Benchmark,
    Model,
    Optimizer,
    Resources,
    Study,
    UnknownFieldError,
    no_plugins,
)

# name -> submodule; loaded on first use (they import torch, pandas and ray.tune).
_LAZY = {
    "StudyError": "loader",
    "load_study": "loader",
    "load_study_source": "loader",
    "validate_study": "loader",
    "apply_overrides": "plan",
    "plan_trials": "plan",
    "ResultStore": "results",
    "SCHEMA_VERSION": "results",
    "run_trial": "trial",
    "make_trial": "trial",
    "trial_key": "trial",
    "serialize_state": "trial",
    "deserialize_state": "trial",
    "FINAL_METRICS": "trial",
    "PER_EXPERIENCE_METRICS": "trial",
}

__all__ = ["BENCHMARKS", "MODELS", "OPTIMIZERS", "Arm", "Benchmark", "Model", "Optimizer",
           "Resources", "Study", "UnknownFieldError", "no_plugins", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raycl.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raycl.study.{module}"), name)
