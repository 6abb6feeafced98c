"""What a study is: the study file format, its validation, its trials, the Parquet results.

A study file defines ``study = Study(...)`` (see :mod:`raycl.study.spec`); ``python -m
raycl.study STUDY_FILE`` validates it, plans its trials and hands them to :mod:`raycl.tune`,
which runs them on Ray Tune and writes ``trials.parquet``, ``matrix.parquet`` and
``curves.parquet`` under ``<storage>/<study name>/``.

The modules, lowest first: :mod:`~raycl.study.schema` (every column and metric name),
:mod:`~raycl.study.spec` (the study file's vocabulary and :class:`TrialSpec`),
:mod:`~raycl.study.space` (search spaces), :mod:`~raycl.study.selection` (the best config of an
arm), :mod:`~raycl.study.results` (the Parquet tables), :mod:`~raycl.study.build`,
:mod:`~raycl.study.loader` (loading and validating a study file), :mod:`~raycl.study.summary`
(what the command prints), :mod:`~raycl.study.plan` (overrides, trials, the resume plan:
:func:`prepare_run`), :mod:`~raycl.study.trial` (one trial, without Ray). Nothing here starts
or drives Ray; Ray Tune's domain classes (``tune.loguniform`` ...) are the study file's
vocabulary and are used here.
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
    PerExperience,
    Resources,
    Study,
    TrialSpec,
    UnknownFieldError,
    make_trial,
    no_plugins,
    trial_key,
)

# name -> submodule; loaded on first use (they import torch, pandas and ray.tune).
_LAZY = {
    "StudyError": "loader",
    "load_study": "loader",
    "load_study_source": "loader",
    "validate_study": "loader",
    "apply_overrides": "plan",
    "plan_trials": "plan",
    "prepare_run": "plan",
    "PreparedRun": "plan",
    "RunError": "plan",
    "StudySource": "plan",
    "ResultStore": "results",
    "SCHEMA_VERSION": "schema",
    "FINAL_METRICS": "schema",
    "PER_EXPERIENCE_METRICS": "schema",
    "run_trial": "trial",
    "serialize_state": "trial",
    "deserialize_state": "trial",
}

__all__ = ["BENCHMARKS", "MODELS", "OPTIMIZERS", "Arm", "Benchmark", "Model", "Optimizer",
           "PerExperience", "Resources", "Study", "TrialSpec", "UnknownFieldError", "make_trial",
           "no_plugins",
           "trial_key", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raycl.study' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raycl.study.{module}"), name)
