"""One trial, without Ray: train an arm's config with one seed, report after every experience.

:func:`run_trial` is the whole trainable. The Tune layer (``raycl.tune.trainable``) only adapts
it: it turns ``report(metrics, state)`` into ``tune.report(metrics, checkpoint=...)`` and hands a
restored checkpoint back as ``checkpoint_state``. Everything here runs and is tested without Ray.

A trial is a :class:`~raycl.study.plan.TrialSpec` (arm, params, seed and their key); the metric
names of its reports are those of :mod:`raycl.study.schema`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from raycl.benchmarks.base import CLBenchmark, Experience
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
from raycl.plugins.base import plugin_spec
from raycl.study.build import (
    build_benchmark,
    build_model,
    build_optimizer,
    build_plugins,
    input_shape,
    slice_benchmark,
)
from raycl.study.divergence import DivergenceGuard, TrialDiverged
from raycl.study.plan import TrialSpec
from raycl.study.schema import (
    AVG_ACCURACY,
    AVG_FORGETTING,
    BWT,
    COST_METRICS,
    DEVICE,
    DIVERGED,
    EVAL_TIME_S,
    EXPERIENCE,
    FINAL_AVG_ACCURACY,
    FWT,
    GPU_IDS,
    NODE_ID,
    NODE_IP,
    PEAK_MEMORY_MB,
    PLUGIN_SPEC,
    STREAM_ACCURACY,
    STREAM_LOSS,
    TEST,
    TRAIN_TIME_S,
    VALID,
    accuracy_column,
    loss_column,
    split_column,
)
from raycl.study.spec import Benchmark, Study
from raycl.training import Naive

__all__ = [
    "CHECKPOINT_FORMAT",
    "ReportFn",
    "deserialize_state",
    "run_trial",
    "seed_everything",
    "serialize_state",
]

#: Layout version of the checkpoint state.
CHECKPOINT_FORMAT = 1

#: ``report(metrics, state)``: called once per experience; ``state`` is the checkpoint (None
#: for the last report of a diverged trial).
ReportFn = Callable[[dict[str, Any], "dict[str, Any] | None"], None]


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
def _cached_benchmark(fields: tuple[Any, ...], trial_seed: int) -> CLBenchmark:
    # Trials of one study share the benchmark; a reused trial process builds it once.
    return build_benchmark(Benchmark(*fields), trial_seed)


def _benchmark(spec: Benchmark, trial: TrialSpec) -> CLBenchmark:
    # The trial seed matters only when the benchmark's own seed is None.
    bench = _cached_benchmark(dataclasses.astuple(spec), trial.seed if spec.seed is None else 0)
    return bench if trial.stream is None else slice_benchmark(bench, *trial.stream)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Peak resident set size of the process (kB on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _weighted(values: list[float], weights: list[int]) -> float:
    total = sum(weights)
    return float(sum(v * w for v, w in zip(values, weights)) / total) if total else math.nan


class _TrialRun:
    """The learner of one trial and what its reports need: built from the study and the trial,
    started fresh or from a checkpoint state, trained and evaluated one experience at a time."""

    def __init__(self, study: Study, trial: TrialSpec, device: torch.device,
                 check_every: int | None) -> None:
        arms = {a.name: a for a in study.arms}
        if trial.arm not in arms:
            raise ValueError(f"trial arm {trial.arm!r} is not an arm of study {study.name!r}")
        arm, config = arms[trial.arm], dict(trial.params)
        self.key, self.device, self.config = trial.trial_key, device, config
        self.joint = arm.joint
        bench = _benchmark(study.benchmark, trial)
        seed_everything(trial.seed)  # after the (cached) benchmark: init and data order follow
        model = build_model(study.model, input_shape(bench), bench.n_classes,
                            study.benchmark.resolved_scenario)
        optimizer = build_optimizer(study.optimizer, model.parameters(), config)
        self._fresh_optimizer_defaults = {k: v for k, v in optimizer.defaults.items()
                                          if k in ("lr", "momentum", "weight_decay")}
        plugins = build_plugins(arm, config, model)
        self.plugin_spec = "; ".join(plugin_spec(p) for p in plugins)
        if check_every is None:  # a check is free on the CPU, a host sync on a GPU
            check_every = 16 if device.type == "cuda" else 1
        plugins.append(DivergenceGuard(check_every))
        # collect_all=False: the history would only grow every checkpoint; reports carry it
        self.evaluator = EvaluationPlugin(accuracy_metrics(experience=True),
                                          loss_metrics(experience=True), collect_all=False)
        self.strategy = Naive(
            model, optimizer, nn.CrossEntropyLoss(),
            train_mb_size=int(config.get("train_mb_size", study.train_mb_size)),
            train_epochs=int(config.get("train_epochs", study.train_epochs)),
            eval_mb_size=study.eval_mb_size, device=device, plugins=plugins,
            evaluator=self.evaluator, reset_optimizer=study.reset_optimizer)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.train_stream = bench.train_stream
        #: split -> its stream (the validation stream only when the benchmark holds one)
        self.streams = {TEST: bench.test_stream,
                        **({VALID: bench.valid_stream} if bench.valid_stream else {})}
        # Reports number experiences as the whole benchmark does, whatever slice runs here.
        self.offset = trial.stream[0] if trial.stream is not None else 0
        # A multi-head model has no head for a task it has not trained on: it is evaluated on
        # the experiences seen so far only (forward transfer is then undefined: NaN).
        self.seen_only = isinstance(model, MultiTaskModule)
        # Forward transfer compares accuracy on an experience before training on it with the
        # untrained model's; in a class-incremental stream both are 0 by construction (its
        # classes were never a target), so the difference is initialisation noise: NaN.
        self.class_incremental = study.benchmark.resolved_scenario == "class"
        self.initial = {split: [math.nan] * len(stream) for split, stream in self.streams.items()}
        self.train_time = self.eval_time = 0.0

    def start(self, state: Mapping[str, Any] | None, init: Mapping[str, Any] | None) -> int:
        """Continue from ``state`` (this trial's own checkpoint), or from ``init`` (another
        trial's checkpoint, with this trial's hyperparameters), or evaluate the untrained model
        (the ``b_j`` of forward transfer); returns the first experience to train."""
        if state is None and init is None:
            if not self.seen_only:
                t0 = time.perf_counter()
                for split, stream in self.streams.items():
                    self.strategy.eval(stream)
                    self.initial[split] = self.evaluator.initial_accuracies(_stream_name(split))
                self.eval_time += time.perf_counter() - t0
            return 0
        if state is not None and (state.get("format") != CHECKPOINT_FORMAT
                                  or state.get("trial_key") != self.key):
            raise ValueError(f"checkpoint_state belongs to trial {state.get('trial_key')!r} "
                             f"(format {state.get('format')!r}), not to {self.key!r}")
        source = state if state is not None else init
        assert source is not None
        if source.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"init state has format {source.get('format')!r}, expected "
                             f"{CHECKPOINT_FORMAT}")
        self.strategy.load_state_dict(source["strategy"])
        if state is None:  # another trial's learner: this trial's optimizer settings apply
            self._apply_optimizer_settings()
        self.initial = {split: [float(v) for v in values]
                        for split, values in source["initial_accuracies"].items()}
        self.train_time, self.eval_time = float(source["train_time_s"]), float(
            source["eval_time_s"])
        return int(source["next_experience"])

    def _apply_optimizer_settings(self) -> None:
        # load_state_dict restored the other trial's learning rate and momentum with the state
        fresh = self._fresh_optimizer_defaults
        for group in self.strategy.optimizer.param_groups:
            group.update({k: v for k, v in fresh.items() if k in group})

    def evaluated(self, i: int, split: str = TEST) -> list[Experience]:
        """The experiences of ``split`` evaluated after training experience ``i``."""
        stream = self.streams[split]
        return stream[:i + 1] if self.seen_only else list(stream)

    def train_and_evaluate(self, i: int) -> None:
        """Train experience ``i`` (a joint arm: experiences 0..i together), then evaluate
        (:class:`TrialDiverged` if the loss blew up)."""
        _sync(self.device)
        t0 = time.perf_counter()
        self.strategy.train(joint_experience(self.train_stream, i) if self.joint
                            else self.train_stream[i])
        _sync(self.device)
        t1 = time.perf_counter()
        for split in self.streams:
            self.strategy.eval(self.evaluated(i, split))
        self.eval_time += time.perf_counter() - t1
        self.train_time += t1 - t0

    def metrics(self, i: int, resumed_from: int) -> dict[str, Any]:
        """The report after experience ``i`` (see :func:`run_trial`)."""
        metrics: dict[str, Any] = {EXPERIENCE: self.offset + i}
        for split in self.streams:
            metrics.update(self._split_metrics(i, split))
        metrics.update({TRAIN_TIME_S: self.train_time, EVAL_TIME_S: self.eval_time,
                        PEAK_MEMORY_MB: _peak_memory_mb(self.device),
                        "resumed_from": resumed_from})
        return metrics

    def _split_metrics(self, i: int, split: str) -> dict[str, Any]:
        name = _stream_name(split)
        matrix = self.evaluator.accuracy_matrix(name)
        evaluated = self.evaluated(i, split)
        n_eval = len(evaluated)
        accs = matrix[i][:n_eval]
        losses = self.evaluator.loss_matrix(name)[i][:n_eval]
        sizes = [len(e.dataset) for e in evaluated]
        o = self.offset
        metrics: dict[str, Any] = {
            **{accuracy_column(o + j, split): accs[j] for j in range(n_eval)},
            **{loss_column(o + j, split): losses[j] for j in range(n_eval)},
            split_column(split, AVG_ACCURACY): average_accuracy(matrix, after=i, seen_only=True),
            split_column(split, STREAM_ACCURACY): _weighted(accs, sizes),
            split_column(split, STREAM_LOSS): _weighted(losses, sizes),
        }
        if i == len(self.train_stream) - 1:
            metrics.update({
                split_column(split, FINAL_AVG_ACCURACY): average_accuracy(matrix),
                split_column(split, AVG_FORGETTING): average_forgetting(matrix),
                split_column(split, BWT): backward_transfer(matrix),
                split_column(split, FWT): (math.nan if self.class_incremental else
                                           forward_transfer(matrix, self.initial[split]))})
        return metrics

    def diverged(self, i: int, err: TrialDiverged) -> dict[str, Any]:
        """The last report of a trial that diverged in experience ``i``: NaN metrics (a
        scheduler gets the metric it ranks on, and ranks this trial last) and the reason."""
        nan: dict[str, Any] = {k: math.nan for k in COST_METRICS}
        for split in self.streams:
            n_eval = len(self.evaluated(i, split))
            nan.update({accuracy_column(self.offset + j, split): math.nan for j in range(n_eval)})
            nan.update({loss_column(self.offset + j, split): math.nan for j in range(n_eval)})
            nan.update({split_column(split, m): math.nan
                        for m in (AVG_ACCURACY, STREAM_ACCURACY, STREAM_LOSS)})
        return {**nan, DIVERGED: str(err)}

    def checkpoint(self, i: int) -> dict[str, Any]:
        """Everything needed to continue after experience ``i``."""
        return {"format": CHECKPOINT_FORMAT, "trial_key": self.key, "next_experience": i + 1,
                "strategy": self.strategy.state_dict(),
                "initial_accuracies": {k: list(v) for k, v in self.initial.items()},
                "train_time_s": self.train_time, "eval_time_s": self.eval_time}


def joint_experience(stream: list[Experience], i: int) -> Experience:
    """Experience ``i`` of ``stream`` holding the training data of experiences 0..i together
    (joint training: the upper bound a continual learner is compared with)."""
    from raycl.benchmarks.base import SubsetCLDataset, TensorCLDataset

    parts = [e.dataset for e in stream[:i + 1]]
    if all(isinstance(d, TensorCLDataset) for d in parts):
        data: Any = TensorCLDataset.concat(parts)
    elif all(isinstance(d, SubsetCLDataset) and d.base is parts[0].base
             and d.transform is parts[0].transform for d in parts):
        data = SubsetCLDataset(parts[0].base, torch.cat([d.indices for d in parts]),
                               torch.cat([d.targets for d in parts]),
                               torch.cat([d.task_labels for d in parts]), parts[0].transform)
    else:
        raise ValueError("joint=True needs the experiences' data as tensors or views of one "
                         "dataset")
    current = stream[i]
    classes = sorted({c for e in stream[:i + 1] for c in e.classes_in_this_experience})
    return Experience(data, current.current_experience, classes, current.task_label,
                      current.origin_stream, current.benchmark)


def _stream_name(split: str) -> str:
    """The evaluator's name of a split's stream (``valid_stream``, ``test_stream``)."""
    return f"{split}_stream"


def run_trial(study: Study, trial: TrialSpec, report: ReportFn,
              checkpoint_state: Mapping[str, Any] | None = None, *,
              init_state: Mapping[str, Any] | None = None,
              device: str | torch.device = "cpu",
              info: Mapping[str, Any] | None = None,
              check_every: int | None = None) -> None:
    """Train ``trial`` (arm, params, seed) on every experience of the study's benchmark.

    After each experience it evaluates the validation stream (when the benchmark holds one) and
    the test stream, and calls ``report(metrics, state)`` once, so the number of reports equals
    the experiences done. ``trial.stream`` restricts the benchmark to a slice of its
    experiences; ``init_state`` (another trial's checkpoint state) continues that trial's
    learner with this trial's hyperparameters, for ``trial.steps`` experiences.
    ``state`` is everything needed to continue (model, optimizer, plugins, evaluator, every RNG,
    the untrained model's accuracies, the time spent): passing the last one back as
    ``checkpoint_state`` resumes at the next experience with results identical to an
    uninterrupted run. ``info`` (device, gpu_ids, node_ip, node_id, ...) is added to every report.

    Metrics (names from :mod:`raycl.study.schema`), each accuracy metric once per split
    (``split_column(split, name)``): ``experience`` (index just trained), the accuracy and loss
    on every experience of the split (``accuracy_column(j, split)``, ``loss_column(j, split)``;
    a multi-head model only on the experiences trained so far, having no head for later tasks
    yet), ``avg_accuracy`` (mean over the experiences seen so far), ``stream_accuracy`` /
    ``stream_loss`` (over the evaluated experiences, sample-weighted); ``train_time_s`` (seconds
    in ``strategy.train``, cumulative), ``eval_time_s``, ``peak_memory_mb``, ``resumed_from``
    (experiences restored from a checkpoint by this process); with the last experience also
    ``final_avg_accuracy``, ``avg_forgetting``, ``bwt`` and ``fwt`` per split (see
    ``raycl.evaluation.functional``).

    Divergence: a :class:`~raycl.study.divergence.DivergenceGuard` watches the training loss
    (every iteration on the CPU, every ``check_every`` = 16 on a GPU, and at every epoch's end).
    When it turns NaN or infinite the trial stops at once: a last ``report({DIVERGED: reason,
    ...NaN metrics}, None)`` (no ``experience``, no checkpoint) and ``run_trial`` returns; the
    reports of the experiences done before stand.
    """
    run = _TrialRun(study, trial, torch.device(device), check_every)
    start = run.start(checkpoint_state, init_state)
    stop = len(run.train_stream)
    if trial.steps is not None:  # counted from where the trial began, resumed or not
        first = int(init_state["next_experience"]) if init_state is not None else 0
        stop = min(stop, first + trial.steps)
    extra = {DEVICE: run.device.type, GPU_IDS: None, NODE_IP: None, NODE_ID: None,
             PLUGIN_SPEC: run.plugin_spec, **(info or {})}
    for i in range(start, stop):
        try:
            run.train_and_evaluate(i)
        except TrialDiverged as err:
            report({**run.diverged(i, err), **extra}, None)
            return
        report({**run.metrics(i, start), **extra}, run.checkpoint(i))
