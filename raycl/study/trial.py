"""One trial, without Ray: train an arm's config with one seed, report after every experience.

:func:`run_trial` is the whole trainable. The Tune layer (``raycl.tune.trainable``) only adapts
it: it turns ``report(metrics, state)`` into ``tune.report(metrics, checkpoint=...)`` and hands a
restored checkpoint back as ``checkpoint_state``. Everything here runs and is tested without Ray.

A trial is the dict ``{"arm", "params", "seed", "trial_key"}`` (see :func:`make_trial`); its key is
a hash of the first three, so the same config with the same seed has the same key in every run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import random
import re
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from raycl.benchmarks.base import CLBenchmark
from raycl.plugins.base import StrategyPlugin
from raycl.study.build import (
    build_benchmark,
    build_model,
    build_optimizer,
    build_plugins,
    input_shape,
)
from raycl.study.spec import Benchmark, Study

__all__ = [
    "CHECKPOINT_FORMAT",
    "DIVERGED",
    "DivergenceGuard",
    "FINAL_METRICS",
    "PER_EXPERIENCE_METRICS",
    "ReportFn",
    "deserialize_state",
    "is_produced_metric",
    "make_trial",
    "reported_every_experience",
    "run_trial",
    "seed_everything",
    "serialize_state",
    "trial_key",
    "TrialDiverged",
]

#: Metrics reported once, with the last experience.
FINAL_METRICS: tuple[str, ...] = ("final_avg_accuracy", "avg_forgetting", "bwt", "fwt")
#: Numeric metrics reported after every experience (plus ``acc_exp_NNN`` and ``loss_exp_NNN``).
PER_EXPERIENCE_METRICS: tuple[str, ...] = ("avg_accuracy", "stream_accuracy", "stream_loss",
                                           "train_time_s", "eval_time_s", "peak_memory_mb")
_PER_EXP_PATTERN = re.compile(r"^(acc|loss)_exp_\d{3}$")
#: Layout version of the checkpoint state.
CHECKPOINT_FORMAT = 1

#: Key of the report a diverged trial ends with (its value says why); that report has no
#: ``experience`` and only NaN metrics, and no checkpoint.
DIVERGED = "diverged"

#: ``report(metrics, state)``: called once per experience; ``state`` is the checkpoint (None
#: for the last report of a diverged trial).
ReportFn = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


class TrialDiverged(RuntimeError):
    """The training loss of a trial became NaN or infinite."""


class DivergenceGuard(StrategyPlugin):
    """Stops training with :class:`TrialDiverged` once the training loss is NaN or infinite.

    Cheap in the hot loop: every iteration folds the loss into a running ``max(|loss|)`` on the
    loss's own device (NaN propagates through ``torch.maximum``, inf stays inf, and a max of
    finite values never overflows); only every ``check_every`` iterations, and at the end of
    every epoch, is that one value inspected, which is the only host synchronisation on a GPU.

    Args:
        check_every: iterations between checks (>= 1); 1 stops at the very iteration.
    """

    def __init__(self, check_every: int = 1) -> None:
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        self.check_every = check_every
        self._worst: torch.Tensor | None = None
        self._since = 0
        self._iterations = 0  # of the current epoch, counted here: clocks tick at other times

    def before_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Start a new window."""
        self._worst, self._since, self._iterations = None, 0, 0

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Fold this iteration's loss in; check every ``check_every`` iterations."""
        loss = strategy.loss
        if not isinstance(loss, torch.Tensor):
            loss = torch.as_tensor(float(loss))
        loss = loss.detach().abs()
        self._worst = loss if self._worst is None else torch.maximum(self._worst, loss)
        self._since += 1
        self._iterations += 1
        if self._since >= self.check_every:
            self._check(strategy)

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        """Check what the epoch's last iterations left."""
        self._check(strategy)

    def _check(self, strategy: Any) -> None:
        worst, self._worst, self._since = self._worst, None, 0
        if worst is None or bool(torch.isfinite(worst)):
            return
        clock = strategy.clock
        value = "NaN" if bool(torch.isnan(worst)) else "inf"
        raise TrialDiverged(
            f"training loss became {value} in experience {clock.train_exp_counter}, epoch "
            f"{clock.train_exp_epochs}, by iteration {self._iterations} of the epoch")

_LOSS_EXP = re.compile(r"^Loss_Exp/eval_phase/test_stream/Task(\d+)/Exp(\d+)$")


def is_produced_metric(name: str) -> bool:
    """True when a trial reports a numeric metric called ``name``."""
    return name in FINAL_METRICS or reported_every_experience(name)


def reported_every_experience(name: str) -> bool:
    """True when ``name`` is in every report (so a scheduler can rank trials on it)."""
    return name in PER_EXPERIENCE_METRICS or bool(_PER_EXP_PATTERN.match(name))


def trial_key(arm: str, params: Mapping[str, Any], seed: int) -> str:
    """Stable id of (arm, params, seed): the same in every run of the same study."""
    text = json.dumps([arm, dict(params), int(seed)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_trial(arm: str, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The trial dict of (arm, params, seed), with its key."""
    return {"arm": arm, "params": dict(params), "seed": int(seed),
            "trial_key": trial_key(arm, params, seed)}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's covers CUDA too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def serialize_state(state: Mapping[str, Any]) -> bytes:
    """A checkpoint state as bytes (``torch.save``)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def deserialize_state(data: bytes) -> dict[str, Any]:
    """Bytes from :func:`serialize_state` back to a state, with ``weights_only=True``.

    Tensors go back to the device they were saved from (a GPU trial's plugin state to its GPU,
    RNG states to the CPU, where they must be), or to the CPU where CUDA is not available.
    """
    location = None if torch.cuda.is_available() else torch.device("cpu")
    return torch.load(io.BytesIO(data), map_location=location, weights_only=True)


@functools.lru_cache(maxsize=2)
def _cached_benchmark(name: str, n_experiences: int, scenario: str | None, seed: int | None,
                      root: str | None, download: bool, trial_seed: int) -> CLBenchmark:
    # Trials of one study share the benchmark; a reused trial process builds it once.
    spec = Benchmark(name=name, n_experiences=n_experiences, scenario=scenario, seed=seed,
                     root=root, download=download)
    return build_benchmark(spec, trial_seed)


def _benchmark(spec: Benchmark, trial_seed: int) -> CLBenchmark:
    # The trial seed matters only when the benchmark's own seed is None.
    return _cached_benchmark(spec.name, spec.n_experiences, spec.scenario, spec.seed, spec.root,
                             spec.download, trial_seed if spec.seed is None else 0)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Peak resident set size of the process (kB on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _exp_losses(last_metrics: Mapping[str, Any], n: int) -> list[float]:
    per_exp: dict[int, list[float]] = {}
    for name, value in last_metrics.items():
        match = _LOSS_EXP.match(name)
        if match:
            per_exp.setdefault(int(match[2]), []).append(float(value))
    return [float(np.mean(per_exp[j])) if j in per_exp else math.nan for j in range(n)]


def _weighted(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return float(sum(v * w for v, w in zip(values, weights)) / total) if total else math.nan


def run_trial(study: Study, trial: Mapping[str, Any], report: ReportFn,
              checkpoint_state: Mapping[str, Any] | None = None, *,
              device: str | torch.device = "cpu",
              info: Mapping[str, Any] | None = None,
              check_every: int | None = None) -> None:
    """Train ``trial`` (arm, params, seed) on every experience of the study's benchmark.

    After each experience it evaluates the whole test stream and calls
    ``report(metrics, state)`` once, so the number of reports equals the experiences done.
    ``state`` is everything needed to continue (model, optimizer, plugins, evaluator, every RNG,
    the untrained model's accuracies, the time spent): passing the last one back as
    ``checkpoint_state`` resumes at the next experience with results identical to an
    uninterrupted run. ``info`` (device, gpu_ids, node_ip, ...) is added to every report.

    Metrics: ``experience`` (index just trained), ``acc_exp_NNN`` / ``loss_exp_NNN`` (every
    test experience; a multi-head model only on the experiences trained so far, having no head
    for later tasks yet), ``avg_accuracy`` (mean over the experiences seen so far),
    ``stream_accuracy`` / ``stream_loss`` (over the evaluated experiences, sample-weighted),
    ``train_time_s`` (seconds in ``strategy.train``, cumulative), ``eval_time_s``,
    ``peak_memory_mb``, ``resumed_from`` (experiences restored from a checkpoint by this
    process); with the last experience also ``final_avg_accuracy``, ``avg_forgetting``, ``bwt``
    and ``fwt`` (see ``raycl.evaluation.functional``).

    Divergence: a :class:`DivergenceGuard` watches the training loss (every iteration on the
    CPU, every ``check_every`` = 16 on a GPU, and at every epoch's end). When it turns NaN or
    infinite the trial stops at once: a last ``report({DIVERGED: reason, ...NaN metrics},
    None)`` (no ``experience``, no checkpoint) and ``run_trial`` returns; the reports of the
    experiences done before stand.
    """
    from raycl.evaluation import (
        EvaluationPlugin,
        accuracy_metrics,
        average_accuracy,
        average_forgetting,
        backward_transfer,
        forward_transfer,
        loss_metrics,
    )
    from raycl.models import MultiTaskModule
    from raycl.training import Naive

    arms = {a.name: a for a in study.arms}
    if trial["arm"] not in arms:
        raise ValueError(f"trial arm {trial['arm']!r} is not an arm of study {study.name!r}")
    arm = arms[trial["arm"]]
    config = dict(trial["params"])
    seed = int(trial["seed"])
    key = trial.get("trial_key") or trial_key(arm.name, config, seed)
    device = torch.device(device)

    bench = _benchmark(study.benchmark, seed)
    seed_everything(seed)  # after the (cached) benchmark: model init and data order follow seed
    scenario = study.benchmark.resolved_scenario
    model = build_model(study.model, input_shape(bench), bench.n_classes, scenario)
    optimizer = build_optimizer(study.optimizer, model.parameters(), config)
    plugins = build_plugins(arm, config, model)
    if check_every is None:  # a check is free on the CPU, a host sync on a GPU
        check_every = 16 if device.type == "cuda" else 1
    plugins.append(DivergenceGuard(check_every))
    # collect_all=False: the history would only grow every checkpoint; reports carry it
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True),
                                 loss_metrics(experience=True), collect_all=False)
    strategy = Naive(model, optimizer, nn.CrossEntropyLoss(),
                     train_mb_size=int(config.get("train_mb_size", study.train_mb_size)),
                     train_epochs=int(config.get("train_epochs", study.train_epochs)),
                     eval_mb_size=study.eval_mb_size, device=device, plugins=plugins,
                     evaluator=evaluator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    train_stream, test_stream = bench.train_stream, bench.test_stream
    n_train, n_test = len(train_stream), len(test_stream)
    # A multi-head model has no head for a task it has not trained on: it is evaluated on the
    # experiences seen so far only (forward transfer is then undefined: NaN).
    seen_only = isinstance(model, MultiTaskModule)
    if checkpoint_state is not None:
        state = checkpoint_state
        if state.get("format") != CHECKPOINT_FORMAT or state.get("trial_key") != key:
            raise ValueError(f"checkpoint_state belongs to trial {state.get('trial_key')!r} "
                             f"(format {state.get('format')!r}), not to {key!r}")
        strategy.load_state_dict(state["strategy"])
        start = int(state["next_experience"])
        initial = [float(v) for v in state["initial_accuracies"]]
        train_time, eval_time = float(state["train_time_s"]), float(state["eval_time_s"])
    else:
        start, train_time, eval_time = 0, 0.0, 0.0
        initial = [math.nan] * n_test
        if not seen_only:
            t0 = time.perf_counter()
            strategy.eval(test_stream)  # the untrained model: b_j of forward transfer
            initial = evaluator.initial_accuracies()
            eval_time += time.perf_counter() - t0
    extra = {"device": str(device.type), "gpu_ids": "", "node_ip": ""}
    extra.update(info or {})

    for i in range(start, n_train):
        _sync(device)
        t0 = time.perf_counter()
        try:
            strategy.train(train_stream[i])
        except TrialDiverged as err:
            n_eval = (i + 1) if seen_only else n_test
            nan = {**{f"acc_exp_{j:03d}": math.nan for j in range(n_eval)},
                   **{f"loss_exp_{j:03d}": math.nan for j in range(n_eval)},
                   **{k: math.nan for k in PER_EXPERIENCE_METRICS}}
            # NaN metrics: a scheduler gets the metric it ranks on, and ranks this trial last
            report({**nan, **extra, DIVERGED: str(err)}, None)
            return
        _sync(device)
        t1 = time.perf_counter()
        evaluated = test_stream[:i + 1] if seen_only else test_stream
        strategy.eval(evaluated)
        eval_time += time.perf_counter() - t1
        train_time += t1 - t0

        matrix = evaluator.accuracy_matrix()
        n_eval = len(evaluated)
        accs = matrix[i][:n_eval]
        losses = _exp_losses(evaluator.get_last_metrics(), n_eval)
        sizes = [len(e.dataset) for e in evaluated]
        metrics: dict[str, Any] = {
            "experience": i,
            **{f"acc_exp_{j:03d}": accs[j] for j in range(n_eval)},
            **{f"loss_exp_{j:03d}": losses[j] for j in range(n_eval)},
            "avg_accuracy": average_accuracy(matrix, after=i, seen_only=True),
            "stream_accuracy": _weighted(accs, sizes),
            "stream_loss": _weighted(losses, sizes),
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            "peak_memory_mb": _peak_memory_mb(device),
            "resumed_from": start,
            **extra,
        }
        if i == n_train - 1:
            metrics.update(final_avg_accuracy=average_accuracy(matrix),
                           avg_forgetting=average_forgetting(matrix),
                           bwt=backward_transfer(matrix),
                           fwt=forward_transfer(matrix, initial))
        state_out = {
            "format": CHECKPOINT_FORMAT,
            "trial_key": key,
            "next_experience": i + 1,
            "strategy": strategy.state_dict(),
            "initial_accuracies": list(initial),
            "train_time_s": train_time,
            "eval_time_s": eval_time,
        }
        report(metrics, state_out)
