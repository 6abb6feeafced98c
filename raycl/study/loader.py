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
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from raycl.benchmarks.registry import benchmark_entry
from raycl.benchmarks.validation import check_validation_size
from raycl.checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_optional_int,
    check_rate,
    check_seed,
)
from raycl.study.protocol import PROTOCOLS
from raycl.study.results import SMOKE_FOLDER
from raycl.study.schema import (
    FINAL_METRICS,
    PER_EXPERIENCE_METRICS,
    accuracy_column,
    is_produced_metric,
    loss_column,
)
from raycl.study.space import arm_rng, check_space, is_domain, is_grid, sample_configs, to_plain
from raycl.study.spec import (
    BENCHMARKS,
    MODELS,
    OPTIMIZERS,
    Arm,
    Study,
    UnknownFieldError,
)
from raycl.study.stats import INTERVAL_METHODS, PAIRED_TESTS

__all__ = ["StudyError", "load_study", "load_study_source", "read_study_file", "validate_study"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: The longest study or arm name (both become parts of folder and file names).
MAX_NAME_LENGTH = 100
#: How many configs of each arm validation builds plugins from (plus the domain bounds).
VALIDATION_SAMPLES = 20


class StudyError(Exception):
    """A study file that cannot run: ``<file>: <field>: <what>``, on one line."""

    def __init__(self, path: str | Path, field: str, what: str) -> None:
        self.path = str(path)
        self.field = field
        self.what = " ".join(str(what).split())  # one line, whatever the cause printed
        super().__init__(f"{self.path}: {self.field}: {self.what}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*self.args), and args holds the joined message only: a
        # StudyError raised in a trial process must reach the driver whole (Ray pickles it).
        return type(self), (self.path, self.field, self.what)


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


def read_study_file(path: str | Path) -> str:
    """The text of the study file at ``path``; :class:`StudyError` when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise StudyError(path, "file", "no such file" if not p.exists() else "not a file")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(path, "file", f"cannot read: {err}") from None


def load_study(path: str | Path, *, validate: bool = True) -> Study:
    """Import the study file at ``path`` and return its ``study``, validated.

    Raises :class:`StudyError` for a missing file, a syntax error, an unknown field, an arm with
    an empty space (unless ``baseline=True``), a space value that is neither a Tune domain nor a
    constant, a metric trials do not produce, and hyperparameters the plugins reject.
    """
    return load_study_source(str(path), read_study_file(path), validate=validate)


# ---- validation ----------------------------------------------------------------------------------
Problems = list[tuple[str, str]]


def _check(cond: bool, problems: Problems, field: str, what: str) -> None:
    if not cond:
        problems.append((field, what))


def _checked(problems: Problems, field: str, check: Callable[..., Any], value: Any,
             *args: Any, **kwargs: Any) -> bool:
    """Run ``check(field, value, ...)`` (a :mod:`raycl.checks` check); a failure becomes a
    problem of ``field``. True when the value passed."""
    try:
        check(field, value, *args, **kwargs)
    except (TypeError, ValueError) as err:
        short = field.rsplit(".", 1)[-1]  # a check that names the bare parameter
        problems.append((field, str(err).removeprefix(f"{field} ").removeprefix(f"{short} ")))
        return False
    return True


def _settings_problems(study: Study) -> Problems:
    p: Problems = []
    _check(isinstance(study.name, str) and bool(_NAME.match(study.name)), p, "name",
           f"must be letters, digits, '_', '-' or '.', got {study.name!r}")
    # the study's folder name; Ray's experiment folders add to it, and file names stop at 255
    _check(not isinstance(study.name, str) or len(study.name) <= MAX_NAME_LENGTH, p, "name",
           f"must be at most {MAX_NAME_LENGTH} characters, got {len(str(study.name))}")
    _check(not isinstance(study.name, str) or study.name.lower() != SMOKE_FOLDER, p, "name",
           f"{study.name!r} is reserved: --smoke checks go to <storage>/{SMOKE_FOLDER}/<name>/")
    b = study.benchmark
    _check(b.name in BENCHMARKS, p, "benchmark.name",
           f"unknown benchmark {b.name!r}; choose one of {', '.join(BENCHMARKS)}")
    if b.name in BENCHMARKS:
        _check(b.resolved_scenario in BENCHMARKS[b.name], p, "benchmark.scenario",
               f"{b.name} supports {' or '.join(BENCHMARKS[b.name])}, got {b.scenario!r}")
    if _checked(p, "benchmark.n_experiences", check_int, b.n_experiences, minimum=1) \
            and b.name in BENCHMARKS:
        entry = benchmark_entry(b.name)
        # caught here rather than inside every trial, where it would fail them all
        _check(not entry.splits_classes or entry.n_classes % b.n_experiences == 0, p,
               "benchmark.n_experiences", f"{b.name} has {entry.n_classes} classes, which "
               f"{b.n_experiences} experiences do not divide evenly")
    _checked(p, "benchmark.seed", check_seed, b.seed)
    m = study.model
    _checked(p, "model.name", check_choice, m.name, MODELS)
    _checked(p, "model.hidden_size", check_int, m.hidden_size, minimum=1)
    _checked(p, "model.hidden_layers", check_int, m.hidden_layers, minimum=0)
    _checked(p, "model.drop_rate", check_rate, m.drop_rate)
    o = study.optimizer
    _checked(p, "optimizer.name", check_choice, o.name, OPTIMIZERS)
    _checked(p, "optimizer.lr", check_number, o.lr, low=0.0, low_open=True)
    _checked(p, "optimizer.momentum", check_rate, o.momentum)
    _checked(p, "optimizer.weight_decay", check_number, o.weight_decay, low=0.0)
    for name in ("train_epochs", "train_mb_size", "eval_mb_size", "num_samples"):
        _checked(p, name, check_int, getattr(study, name), minimum=1)
    seeds = study.seeds
    _check(isinstance(seeds, (list, tuple)) and len(seeds) > 0
           and all(_passes(check_int, "seed", s, minimum=0) for s in seeds)
           and len(set(seeds)) == len(seeds), p, "seeds",
           f"must be a non-empty list of distinct ints >= 0, got {seeds!r}")
    _check(isinstance(study.metric, str) and is_produced_metric(study.metric), p, "metric",
           f"{study.metric!r} is not a metric trials report; use "
           f"{', '.join((*FINAL_METRICS, *PER_EXPERIENCE_METRICS))}, "
           f"{accuracy_column(0).removesuffix('000')}NNN or "
           f"{loss_column(0).removesuffix('000')}NNN")
    _checked(p, "mode", check_choice, study.mode, ("max", "min"))
    _checked(p, "scheduler", check_choice, study.scheduler, (None, "asha"))
    _checked(p, "search", check_choice, study.search, ("random", "grid", "optuna"))
    if study.search == "optuna" and importlib.util.find_spec("optuna") is None:
        p.append(("search", "'optuna' needs the optuna package (pip install 'raycl[optuna]')"))
    _checked(p, "search_seed", check_int, study.search_seed, minimum=0)
    r = study.resources
    if r.gpus_per_trial is not None:
        _checked(p, "resources.gpus_per_trial", check_number, r.gpus_per_trial, low=0.0)
    _checked(p, "resources.cpus_per_trial", check_number, r.cpus_per_trial, low=0.0)
    _checked(p, "max_failures", check_int, study.max_failures, minimum=0)
    _checked(p, "max_concurrent", check_optional_int, study.max_concurrent, minimum=1)
    # 2 at least: a corrupt last checkpoint falls back to the one before it
    _checked(p, "keep_checkpoints", check_optional_int, study.keep_checkpoints, minimum=2)
    p += _callback_problems(study)
    _check(isinstance(study.keep_final_checkpoint, bool), p, "keep_final_checkpoint",
           f"must be True or False, got {study.keep_final_checkpoint!r}")
    return p + _selection_problems(study)


def _selection_problems(study: Study) -> Problems:
    """The selection protocol's settings, and what it needs of the rest of the study."""
    p: Problems = []
    if not _checked(p, "selection", check_choice, study.selection, PROTOCOLS):
        return p
    b = study.benchmark
    if b.validation_size is not None:
        _checked(p, "benchmark.validation_size", lambda name, v: check_validation_size(v),
                 b.validation_size)
    elif study.selection != "test":
        p.append(("benchmark.validation_size", f"selection={study.selection!r} chooses on the "
                  "validation stream: give the benchmark a validation_size (default 0.1), or "
                  "select on 'test' (optimistic)"))
    n = b.n_experiences if _passes(check_int, "n", b.n_experiences, minimum=1) else None
    if study.selection == "first_tasks" and n is not None:
        _checked(p, "tuning_experiences", check_int, study.tuning_experiences, minimum=1,
                 maximum=max(1, n - 1))
    if study.confirm_seeds is not None:
        seeds = study.confirm_seeds
        _check(isinstance(seeds, (list, tuple))
               and all(_passes(check_int, "seed", s, minimum=0) for s in seeds)
               and len(set(seeds)) == len(seeds)
               and not set(seeds) & set(study.seeds if isinstance(study.seeds, list) else []),
               p, "confirm_seeds", f"must be a list of distinct ints >= 0 that are not among "
                                   f"the study's seeds, got {seeds!r}")
    _checked(p, "min_seeds", check_optional_int, study.min_seeds, minimum=1)
    _checked(p, "reset_optimizer", check_bool, study.reset_optimizer)
    _checked(p, "interval", check_choice, study.interval, INTERVAL_METHODS)
    _checked(p, "paired_test", check_choice, study.paired_test, PAIRED_TESTS)
    if study.selection == "per_experience":
        pe = study.per_experience
        _check(isinstance(pe.lr_grid, (list, tuple)) and len(pe.lr_grid) > 0
               and all(_passes(check_number, "lr", v, low=0.0, low_open=True)
                       for v in pe.lr_grid), p, "per_experience.lr_grid",
               f"must be a non-empty list of learning rates > 0, got {pe.lr_grid!r}")
        _checked(p, "per_experience.alpha", check_number, pe.alpha, low=0.0, high=1.0,
                 low_open=True, high_open=True)
        _checked(p, "per_experience.p", check_rate, pe.p)
        _checked(p, "per_experience.max_decays", check_int, pe.max_decays, minimum=0)
        _check(study.search != "optuna", p, "search",
               "per_experience selection chooses its own candidates: use search='random'")
        _check(study.scheduler is None, p, "scheduler",
               "per_experience selection trains one experience per trial: no scheduler")
        for arm in study.arms if isinstance(study.arms, (list, tuple)) else []:
            if not isinstance(arm, Arm):
                continue
            where = f"arms[{arm.name}]"
            searched = [k for k, v in arm.space.items() if is_domain(v) or is_grid(v)]
            _check(not searched, p, f"{where}.space", f"per_experience selection searches only "
                   f"the learning rate and the stability parameter; {searched} are searched")
            if arm.stability is not None:
                _check(isinstance(arm.stability, str), p, f"{where}.stability",
                       f"must be a config key, got {arm.stability!r}")
                _checked(p, f"{where}.stability_start", check_number, arm.stability_start,
                         low=0.0, low_open=True)
    return p


def _passes(check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Whether a :mod:`raycl.checks` check accepts its arguments."""
    try:
        check(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _arm_problems(study: Study) -> list[tuple[str, str]]:
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
        elif len(arm.name) > MAX_NAME_LENGTH:
            p.append((f"arms[{i}].name", f"must be at most {MAX_NAME_LENGTH} characters, "
                                         f"got {len(arm.name)}"))
        elif arm.name in seen:
            p.append((where, "two arms have this name"))
        seen.add(str(arm.name))
        if not callable(arm.plugins):
            p.append((f"{where}.plugins", "must be a function config -> list of plugins"))
        if not isinstance(arm.space, Mapping):
            p.append((f"{where}.space", f"must be a dict, got {type(arm.space).__name__}"))
            continue
        if not arm.space and not arm.baseline and not (
                study.selection == "per_experience" and arm.stability):
            p.append((f"{where}.space", "empty search space: give the arm a parameter to "
                                        "search, or mark it Arm(..., baseline=True)"))
        for key, what in check_space(arm.space, study.search):
            p.append((f"{where}.space.{key}" if key else f"{where}.space", what))
    return p


def _bound_configs(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Configs at the edges of every domain (others at their first value / a sample)."""
    import numpy as np
    from ray.tune.search.sample import Categorical, Float, Integer


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

    model = None
    for arm in study.arms:
        configs = sample_configs(arm.space, VALIDATION_SAMPLES, arm_rng(study.search_seed,
                                                                        arm.name),
                                 "grid" if study.search == "grid" else "random")
        configs = configs[:200] + _bound_configs(arm.space)
        if study.selection == "per_experience":  # the values the protocol will set
            lr = {"lr": study.per_experience.lr_grid[0]}
            configs = [{**c, **lr, **({arm.stability: v} if arm.stability else {})}
                       for c in configs[:1]
                       for v in (0.0, arm.stability_start or 0.0)]
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
                        if k in config:
                            check_int(k, config[k], minimum=1)
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


def _callback_problems(study: Study) -> list[tuple[str, str]]:
    """``callbacks`` must be a list of Ray Tune callbacks."""
    from ray.tune import Callback

    if not isinstance(study.callbacks, (list, tuple)):
        return [("callbacks", f"must be a list of Ray Tune callbacks, got "
                              f"{type(study.callbacks).__name__}")]
    return [(f"callbacks[{i}]", f"must be a Ray Tune callback (ray.tune.Callback, e.g. "
                                f"ray.tune.logger.TBXLoggerCallback()), got {c!r}")
            for i, c in enumerate(study.callbacks) if not isinstance(c, Callback)]


def validate_study(study: Study, filename: str | Path = "<study>") -> None:
    """Raise :class:`StudyError` for the first problem of ``study`` (see :func:`load_study`)."""
    for check in (_settings_problems, _arm_problems, _sample_problems):
        problems = check(study)
        if problems:
            field, what = problems[0]
            raise StudyError(filename, field, what)
