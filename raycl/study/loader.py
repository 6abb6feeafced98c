"""Loading a study file by path and validating it before any Ray work starts.

The file is imported with importlib as a module of its own (never ``exec``'d into the caller's
globals) and must define ``study = Study(...)``. :func:`load_study` then checks every field,
samples each arm's space (bounds included) and builds the arm's plugins from the samples, so an
out-of-range hyperparameter fails here, in a second, rather than in a trial on a cluster. Every
problem is a :class:`StudyError` that prints as one line ``<file>: <field>: <what>``.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import math
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from raycl.study.spec import (
    BENCHMARKS,
    MODELS,
    OPTIMIZERS,
    Arm,
    Study,
    UnknownFieldError,
)

__all__ = ["StudyError", "load_study", "load_study_source", "validate_study"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: How many configs of each arm validation builds plugins from (plus the domain bounds).
VALIDATION_SAMPLES = 20


class StudyError(Exception):
    """A study file that cannot run: ``<file>: <field>: <what>``, on one line."""

    def __init__(self, path: str | Path, field: str, what: str) -> None:
        self.path = str(path)
        self.field = field
        self.what = " ".join(str(what).split())  # one line, whatever the cause printed
        super().__init__(f"{self.path}: {self.field}: {self.what}")


class _SourceLoader(importlib.abc.SourceLoader):
    """Loads a module from source text, reporting ``filename`` in tracebacks."""

    def __init__(self, filename: str, source: str) -> None:
        self.filename = filename
        self.source = source

    def get_filename(self, fullname: str) -> str:
        return self.filename

    def get_data(self, path: str) -> bytes:
        return self.source.encode()

    def path_stats(self, path: str) -> Mapping[str, Any]:
        raise OSError  # no bytecode caching for study files


def _import(filename: str, source: str) -> ModuleType:
    digest = hashlib.sha1(f"{filename}\0{source}".encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", Path(filename).stem)  # a valid module name whatever the file
    name = f"raycl_study_{stem}_{digest}"
    if name in sys.modules:  # the same text was loaded before in this process
        return sys.modules[name]
    loader = _SourceLoader(filename, source)
    spec = importlib.util.spec_from_loader(name, loader, origin=filename)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    # Registered while it runs: dataclasses and pickling look modules up by name.
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _line_in(filename: str, err: BaseException) -> str:
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    return f"line {lines[-1]}" if lines else "study"


def load_study_source(filename: str | Path, source: str, *, validate: bool = True) -> Study:
    """The study defined by ``source`` (the text of ``filename``); see :func:`load_study`."""
    filename = str(filename)
    try:
        compile(source, filename, "exec")
    except SyntaxError as err:
        raise StudyError(filename, f"line {err.lineno}", f"syntax error: {err.msg}") from None
    try:
        module = _import(filename, source)
    except UnknownFieldError as err:
        field = err.name if err.cls_name == "Study" else f"{err.cls_name}.{err.name}"
        raise StudyError(filename, field, f"unknown field of {err.cls_name}{err.hint}") from None
    except Exception as err:
        raise StudyError(filename, _line_in(filename, err),
                         f"{type(err).__name__}: {err}") from None
    study = getattr(module, "study", None)
    if study is None:
        raise StudyError(filename, "study", "the file must define study = Study(...)")
    if not isinstance(study, Study):
        raise StudyError(filename, "study",
                         f"must be a raycl.study.Study, got {type(study).__name__}")
    if validate:
        validate_study(study, filename)
    return study


def load_study(path: str | Path, *, validate: bool = True) -> Study:
    """Import the study file at ``path`` and return its ``study``, validated.

    Raises :class:`StudyError` for a missing file, a syntax error, an unknown field, an arm with
    an empty space (unless ``baseline=True``), a space value that is neither a Tune domain nor a
    constant, a metric trials do not produce, and hyperparameters the plugins reject.
    """
    p = Path(path)
    if not p.is_file():
        raise StudyError(path, "file", "no such file" if not p.exists() else "not a file")
    try:
        source = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(path, "file", f"cannot read: {err}") from None
    return load_study_source(str(path), source, validate=validate)


# ---- validation ----------------------------------------------------------------------------------
def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check(cond: bool, problems: list[tuple[str, str]], field: str, what: str) -> None:
    if not cond:
        problems.append((field, what))


#: Number of classes of the benchmarks that split classes over experiences.
_SPLIT_CLASSES = {"split_digits": 10, "split_mnist": 10, "split_fashion_mnist": 10,
                  "split_cifar10": 10, "split_cifar100": 100}


def _settings_problems(study: Study) -> list[tuple[str, str]]:
    from raycl.study.trial import is_produced_metric

    p: list[tuple[str, str]] = []
    _check(isinstance(study.name, str) and bool(_NAME.match(study.name)), p, "name",
           f"must be letters, digits, '_', '-' or '.', got {study.name!r}")
    b = study.benchmark
    _check(b.name in BENCHMARKS, p, "benchmark.name",
           f"unknown benchmark {b.name!r}; choose one of {', '.join(BENCHMARKS)}")
    if b.name in BENCHMARKS:
        _check(b.resolved_scenario in BENCHMARKS[b.name], p, "benchmark.scenario",
               f"{b.name} supports {' or '.join(BENCHMARKS[b.name])}, got {b.scenario!r}")
    _check(_is_int(b.n_experiences, 1), p, "benchmark.n_experiences",
           f"must be an int >= 1, got {b.n_experiences!r}")
    n_classes = _SPLIT_CLASSES.get(b.name)
    if n_classes is not None and _is_int(b.n_experiences, 1):
        # caught here rather than inside every trial, where it would fail them all
        _check(n_classes % b.n_experiences == 0, p, "benchmark.n_experiences",
               f"{b.name} has {n_classes} classes, which {b.n_experiences} experiences "
               "do not divide evenly")
    _check(b.seed is None or _is_int(b.seed, 0), p, "benchmark.seed",
           f"must be None or an int >= 0, got {b.seed!r}")
    m = study.model
    _check(m.name in MODELS, p, "model.name",
           f"unknown model {m.name!r}; choose one of {', '.join(MODELS)}")
    _check(_is_int(m.hidden_size, 1), p, "model.hidden_size", f"must be an int >= 1, got "
                                                             f"{m.hidden_size!r}")
    _check(_is_int(m.hidden_layers, 0), p, "model.hidden_layers",
           f"must be an int >= 0, got {m.hidden_layers!r}")
    _check(_is_number(m.drop_rate) and 0 <= m.drop_rate < 1, p, "model.drop_rate",
           f"must be in [0, 1), got {m.drop_rate!r}")
    o = study.optimizer
    _check(o.name in OPTIMIZERS, p, "optimizer.name",
           f"unknown optimizer {o.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    _check(_is_number(o.lr) and o.lr > 0, p, "optimizer.lr", f"must be > 0, got {o.lr!r}")
    _check(_is_number(o.momentum) and 0 <= o.momentum < 1, p, "optimizer.momentum",
           f"must be in [0, 1), got {o.momentum!r}")
    _check(_is_number(o.weight_decay) and o.weight_decay >= 0, p, "optimizer.weight_decay",
           f"must be >= 0, got {o.weight_decay!r}")
    for name in ("train_epochs", "train_mb_size", "eval_mb_size", "num_samples"):
        value = getattr(study, name)
        _check(_is_int(value, 1), p, name, f"must be an int >= 1, got {value!r}")
    seeds = study.seeds
    _check(isinstance(seeds, (list, tuple)) and len(seeds) > 0
           and all(_is_int(s, 0) for s in seeds) and len(set(seeds)) == len(seeds), p, "seeds",
           f"must be a non-empty list of distinct ints >= 0, got {seeds!r}")
    _check(isinstance(study.metric, str) and is_produced_metric(study.metric), p, "metric",
           f"{study.metric!r} is not a metric trials report; use final_avg_accuracy, "
           f"avg_forgetting, bwt, fwt, avg_accuracy, stream_accuracy, stream_loss, "
           f"train_time_s, peak_memory_mb, acc_exp_NNN or loss_exp_NNN")
    _check(study.mode in ("max", "min"), p, "mode", f"must be 'max' or 'min', got "
                                                    f"{study.mode!r}")
    _check(study.scheduler in (None, "asha"), p, "scheduler",
           f"must be None or 'asha', got {study.scheduler!r}")
    _check(study.search in ("random", "grid", "optuna"), p, "search",
           f"must be 'random', 'grid' or 'optuna', got {study.search!r}")
    if study.search == "optuna" and importlib.util.find_spec("optuna") is None:
        p.append(("search", "'optuna' needs the optuna package (pip install 'raycl[optuna]')"))
    _check(_is_int(study.search_seed, 0), p, "search_seed",
           f"must be an int >= 0, got {study.search_seed!r}")
    r = study.resources
    _check(r.gpus_per_trial is None or (_is_number(r.gpus_per_trial) and r.gpus_per_trial >= 0),
           p, "resources.gpus_per_trial", f"must be None or >= 0, got {r.gpus_per_trial!r}")
    _check(_is_number(r.cpus_per_trial) and r.cpus_per_trial >= 0, p,
           "resources.cpus_per_trial", f"must be >= 0, got {r.cpus_per_trial!r}")
    _check(_is_int(study.max_failures, 0), p, "max_failures",
           f"must be an int >= 0, got {study.max_failures!r}")
    _check(study.max_concurrent is None or _is_int(study.max_concurrent, 1), p,
           "max_concurrent", f"must be None or an int >= 1, got {study.max_concurrent!r}")
    # 2 at least: a corrupt last checkpoint falls back to the one before it
    _check(study.keep_checkpoints is None or _is_int(study.keep_checkpoints, 2), p,
           "keep_checkpoints", f"must be None or an int >= 2, got {study.keep_checkpoints!r}")
    return p


def _arm_problems(study: Study) -> list[tuple[str, str]]:
    from raycl.tune.space import check_space

    p: list[tuple[str, str]] = []
    if not isinstance(study.arms, (list, tuple)) or not study.arms:
        return [("arms", "must be a non-empty list of Arm")]
    seen: set[str] = set()
    for i, arm in enumerate(study.arms):
        if not isinstance(arm, Arm):
            p.append((f"arms[{i}]", f"must be an Arm, got {type(arm).__name__}"))
            continue
        where = f"arms[{arm.name}]"
        if not isinstance(arm.name, str) or not _ARM_NAME.match(arm.name):
            p.append((f"arms[{i}].name", f"must be letters, digits, '_' or '-', got "
                                         f"{arm.name!r}"))
        elif arm.name in seen:
            p.append((where, "two arms have this name"))
        seen.add(str(arm.name))
        if not callable(arm.plugins):
            p.append((f"{where}.plugins", "must be a function config -> list of plugins"))
        if not isinstance(arm.space, Mapping):
            p.append((f"{where}.space", f"must be a dict, got {type(arm.space).__name__}"))
            continue
        if not arm.space and not arm.baseline:
            p.append((f"{where}.space", "empty search space: give the arm a parameter to "
                                        "search, or mark it Arm(..., baseline=True)"))
        for key, what in check_space(arm.space, study.search):
            p.append((f"{where}.space.{key}" if key else f"{where}.space", what))
    return p


def _bound_configs(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Configs at the edges of every domain (others at their first value / a sample)."""
    import numpy as np
    from ray.tune.search.sample import Categorical, Float, Integer

    from raycl.tune.space import is_domain, is_grid, to_plain

    rng = np.random.default_rng(0)
    base: dict[str, Any] = {}
    edges: dict[str, list[Any]] = {}
    for key, value in space.items():
        if is_grid(value):
            base[key] = to_plain(value["grid_search"][0])
            edges[key] = [to_plain(v) for v in value["grid_search"]]
        elif is_domain(value):
            base[key] = to_plain(value.sample(random_state=rng))
            if isinstance(value, Float):
                edges[key] = [float(value.lower), float(np.nextafter(value.upper, value.lower))]
            elif isinstance(value, Integer):
                edges[key] = [int(value.lower), int(value.upper) - 1]
            elif isinstance(value, Categorical):
                edges[key] = [to_plain(c) for c in value.categories]
        else:
            base[key] = to_plain(value)
    configs = []
    for key, values in edges.items():
        for v in values:
            configs.append({**base, key: v})
    return configs


def _sample_problems(study: Study) -> list[tuple[str, str]]:
    """Build every arm's plugins (and optimizer) from sampled and boundary configs."""
    import torch

    from raycl.study.build import (
        OVERRIDABLE,
        arm_needs_model,
        build_model,
        build_optimizer,
        build_plugins,
        nominal_shape,
    )
    from raycl.tune.space import arm_rng, sample_configs

    model = None
    for arm in study.arms:
        configs = sample_configs(arm.space, VALIDATION_SAMPLES, arm_rng(study.search_seed,
                                                                        arm.name),
                                 "grid" if study.search == "grid" else "random")
        configs = configs[:200] + _bound_configs(arm.space)
        if arm_needs_model(arm) and model is None:
            shape, n_classes = nominal_shape(study.benchmark)
            model = build_model(study.model, shape, n_classes,
                                study.benchmark.resolved_scenario)
        for config in configs:
            where = f"arms[{arm.name}].space"
            try:
                if any(k in config for k in OVERRIDABLE):
                    build_optimizer(study.optimizer, [torch.zeros(1, requires_grad=True)],
                                    config)
                    for k in ("train_epochs", "train_mb_size"):
                        if k in config and not _is_int(config[k], 1):
                            raise ValueError(f"{k} must be an int >= 1, got {config[k]!r}")
                build_plugins(arm, config, model)
            except (ValueError, TypeError) as err:
                named = [k for k in config if re.search(rf"\b{re.escape(k)}\b", str(err))]
                if named:
                    field = f"{where}.{named[0]}"
                else:  # e.g. a keyword the plugin does not take: the factory is at fault
                    field = where if isinstance(err, ValueError) else f"arms[{arm.name}].plugins"
                return [(field, f"{err} (sampled config {config})")]
            except Exception as err:
                return [(f"arms[{arm.name}].plugins",
                         f"{type(err).__name__}: {err} (sampled config {config})")]
    return []


def validate_study(study: Study, filename: str | Path = "<study>") -> None:
    """Raise :class:`StudyError` for the first problem of ``study`` (see :func:`load_study`)."""
    for check in (_settings_problems, _arm_problems, _sample_problems):
        problems = check(study)
        if problems:
            field, what = problems[0]
            raise StudyError(filename, field, what)
