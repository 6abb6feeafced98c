"""Wall time, process memory and GPU memory, named as Avalanche names them.

Granularities follow Avalanche: minibatch and epoch values are measured in training, experience
and stream values in evaluation. Names carry the task label of the current (for stream values:
the last evaluated) experience, e.g. ``Time_Epoch/train_phase/train_stream/Task000``,
``Time_Exp/eval_phase/test_stream/Task000/Exp001``, ``MaxRAMUsage_Experience/...``,
``MaxGPU0Usage_Stream/eval_phase/test_stream/Task000``.

Times are host wall-clock seconds without device synchronisation, so on a GPU a period's time
includes the work it waited for, not necessarily all the work it queued.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from raycl.checks import check_number, check_optional_int
from raycl.evaluation.metric_base import MetricResult, PluginMetric, metric_name

if TYPE_CHECKING:  # pragma: no cover
    from raycl.plugins.base import Strategy

__all__ = ["GPUUsageMetric", "RAMUsageMetric", "TimingMetric", "gpu_usage_metrics",
           "ram_usage_metrics", "timing_metrics"]

_MB = 1024.0 * 1024.0


def _exp_suffix(strategy: Strategy) -> tuple[int, int]:
    exp = strategy.experience
    return int(exp.task_label), int(exp.current_experience)


# ---- timing -----------------------------------------------------------------------------------
class TimingMetric(PluginMetric):
    """Seconds spent per training minibatch / epoch (and the running mean iteration time of the
    epoch), per evaluated experience and per evaluated stream."""

    def __init__(self, *, minibatch: bool = False, epoch: bool = False,
                 epoch_running: bool = False, experience: bool = False,
                 stream: bool = False) -> None:
        super().__init__()
        self.minibatch, self.epoch, self.epoch_running = minibatch, epoch, epoch_running
        self.experience, self.stream = experience, stream
        hooks: set[str] = set()
        if minibatch or epoch_running:
            hooks |= {"before_training_iteration", "after_training_iteration"}
        if epoch or epoch_running:
            hooks.add("before_training_epoch")
        if epoch:
            hooks.add("after_training_epoch")
        if experience:
            hooks |= {"before_eval_exp", "after_eval_exp"}
        if stream:
            hooks |= {"before_eval", "after_eval"}
        self._hooks = frozenset(hooks)
        self._t_mb = self._t_epoch = self._t_exp = self._t_stream = 0.0
        self._epoch_iterations = 0

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._t_mb = time.perf_counter()
        return None

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        now = time.perf_counter()
        task = int(strategy.experience.task_label)
        out: dict[str, float] = {}
        if self.minibatch:
            out[metric_name("Time_MB", strategy, task)] = now - self._t_mb
        if self.epoch_running:
            self._epoch_iterations += 1
            out[metric_name("RunningTime_Epoch", strategy, task)] = (
                (now - self._t_epoch) / self._epoch_iterations)
        return out

    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._t_epoch = time.perf_counter()
        self._epoch_iterations = 0
        return None

    def after_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        seconds = time.perf_counter() - self._t_epoch
        return {metric_name("Time_Epoch", strategy, int(strategy.experience.task_label)): seconds}

    def before_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._t_exp = time.perf_counter()
        return None

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        seconds = time.perf_counter() - self._t_exp
        return {metric_name("Time_Exp", strategy, *_exp_suffix(strategy)): seconds}

    def before_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._t_stream = time.perf_counter()
        return None

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        seconds = time.perf_counter() - self._t_stream
        return {metric_name("Time_Stream", strategy, int(strategy.experience.task_label)): seconds}


def timing_metrics(*, minibatch: bool = False, epoch: bool = False, epoch_running: bool = False,
                   experience: bool = False, stream: bool = False) -> list[PluginMetric]:
    """Wall-clock time at the chosen granularities (Avalanche's ``timing_metrics``)."""
    flags = dict(minibatch=minibatch, epoch=epoch, epoch_running=epoch_running,
                 experience=experience, stream=stream)
    return [TimingMetric(**flags)] if any(flags.values()) else []


# ---- peak-tracking base -----------------------------------------------------------------------
class _PeakMetric(PluginMetric):
    """The peak of a sampled quantity over minibatches, epochs, evaluated experiences and
    streams; nested periods (an evaluation inside a training epoch) each get their own peak."""

    #: granularity -> base name (filled per instance for the GPU metric)
    NAMES: ClassVar[dict[str, str]] = {}

    def __init__(self, minibatch: bool, epoch: bool, experience: bool, stream: bool,
                 every: float) -> None:
        super().__init__()
        self.every = check_number("every", every, low=0.0, low_open=True)  # seconds
        self.minibatch, self.epoch = minibatch, epoch
        self.experience, self.stream = experience, stream
        hooks: set[str] = set()
        if minibatch:
            hooks |= {"before_training_iteration", "after_training_iteration"}
        if epoch:
            hooks |= {"before_training_epoch", "after_training_epoch"}
        if experience:
            hooks |= {"before_eval_exp", "after_eval_exp"}
        if stream:
            hooks |= {"before_eval", "after_eval"}
        self._hooks = frozenset(hooks)
        self._open: dict[str, float] = {}

    def _names(self) -> dict[str, str]:
        return self.NAMES

    def _read(self) -> float:
        """The current value of the quantity (MB)."""
        raise NotImplementedError

    def _observe(self, value: float) -> None:
        for level, peak in self._open.items():
            if value > peak:
                self._open[level] = value

    def _begin(self, level: str) -> None:
        value = self._read()
        self._observe(value)
        self._open[level] = value

    def _end(self, level: str) -> float:
        self._observe(self._read())
        return self._open.pop(level)

    # ---- callbacks --------------------------------------------------------------------------
    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._begin("mb")
        return None

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        name = metric_name(self._names()["mb"], strategy, int(strategy.experience.task_label))
        return {name: self._end("mb")}

    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._begin("epoch")
        return None

    def after_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        name = metric_name(self._names()["epoch"], strategy, int(strategy.experience.task_label))
        return {name: self._end("epoch")}

    def before_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._begin("exp")
        return None

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        name = metric_name(self._names()["exp"], strategy, *_exp_suffix(strategy))
        return {name: self._end("exp")}

    def before_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._begin("stream")
        return None

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        name = metric_name(self._names()["stream"], strategy, int(strategy.experience.task_label))
        return {name: self._end("stream")}


# ---- process memory ---------------------------------------------------------------------------
def _rss_reader() -> Callable[[], int]:
    """A cheap function returning this process's resident set size in bytes."""
    try:
        import psutil

        process = psutil.Process()
        return lambda: process.memory_info().rss
    except ImportError:
        pass
    if os.path.exists("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def statm() -> int:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page

        return statm
    import resource  # no psutil, no /proc: the peak RSS so far is the best available

    return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RAMUsageMetric(_PeakMetric):
    """Peak resident memory of this process in MB (psutil if installed, else ``/proc``).

    Minibatch values are sampled at both ends of the iteration; longer periods are also sampled
    every ``every`` seconds by a background thread that runs only while such a period is open.
    """

    NAMES: ClassVar[dict[str, str]] = {"mb": "MaxRAMUsage_MB", "epoch": "MaxRAMUsage_Epoch",
                                       "exp": "MaxRAMUsage_Experience",
                                       "stream": "MaxRAMUsage_Stream"}

    def __init__(self, *, minibatch: bool = False, epoch: bool = False,
                 experience: bool = False, stream: bool = False, every: float = 0.5) -> None:
        super().__init__(minibatch, epoch, experience, stream, every)
        self._reader: Callable[[], int] | None = None
        self._reader_pid = -1
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    def _read(self) -> float:
        if self._reader is None or self._reader_pid != os.getpid():  # new after a fork
            self._reader, self._reader_pid = _rss_reader(), os.getpid()
        return self._reader() / _MB

    def _observe(self, value: float) -> None:
        with self._lock:
            super()._observe(value)

    def _begin(self, level: str) -> None:
        with self._lock:
            value = self._read()
            for k, peak in self._open.items():
                self._open[k] = max(peak, value)
            self._open[level] = value
        if level != "mb" and self._stop is None:
            self._stop = threading.Event()
            threading.Thread(target=self._sample, args=(self._stop,), daemon=True,
                             name="raycl-ram-sampler").start()

    def _end(self, level: str) -> float:
        value = self._read()
        with self._lock:
            for k, peak in self._open.items():
                self._open[k] = max(peak, value)
            peak = self._open.pop(level)
            idle = all(k == "mb" for k in self._open)
        if idle and self._stop is not None:
            self._stop.set()
            self._stop = None
        return peak

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            self._observe(self._read())

    def __getstate__(self) -> dict[str, Any]:
        # Locks, threads and psutil handles do not pickle (deepcopy, Ray); rebuilt on load.
        state = dict(self.__dict__)
        state.update(_reader=None, _reader_pid=-1, _lock=None, _stop=None, _open={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def ram_usage_metrics(*, every: float = 0.5, minibatch: bool = False, epoch: bool = False,
                      experience: bool = False, stream: bool = False) -> list[PluginMetric]:
    """Peak process RAM (MB) at the chosen granularities (Avalanche's ``ram_usage_metrics``)."""
    flags = dict(minibatch=minibatch, epoch=epoch, experience=experience, stream=stream)
    return [RAMUsageMetric(every=every, **flags)] if any(flags.values()) else []


# ---- GPU memory -------------------------------------------------------------------------------
class GPUUsageMetric(_PeakMetric):
    """Peak GPU memory allocated by PyTorch (``torch.cuda.max_memory_allocated``) in MB.

    Unlike Avalanche (which polls ``nvidia-smi`` for a utilisation percentage) this reads the
    caching allocator's peak, which costs no device sync; it resets the device's peak-memory
    statistics at each period boundary. ``every`` is accepted for Avalanche compatibility and
    unused (the allocator tracks the peak exactly). Without CUDA the metric subscribes to
    nothing and emits nothing.
    """

    def __init__(self, gpu_id: int | None = None, *, minibatch: bool = False,
                 epoch: bool = False, experience: bool = False, stream: bool = False,
                 every: float = 0.5) -> None:
        super().__init__(minibatch, epoch, experience, stream, every)
        gpu_id = check_optional_int("gpu_id", gpu_id, minimum=0)
        self.available = torch.cuda.is_available()
        if gpu_id is None:
            gpu_id = torch.cuda.current_device() if self.available else 0
        self.gpu_id = gpu_id
        prefix = f"MaxGPU{gpu_id}Usage"
        self._gpu_names = {"mb": f"{prefix}_MB", "epoch": f"{prefix}_Epoch",
                           "exp": f"{prefix}_Experience", "stream": f"{prefix}_Stream"}
        if not self.available:
            self._hooks = frozenset()

    def _names(self) -> dict[str, str]:
        return self._gpu_names

    def _read(self) -> float:
        # The peak since the last boundary; resetting makes the next read cover only what
        # follows, and every open period folds it into its own peak.
        peak = torch.cuda.max_memory_allocated(self.gpu_id) / _MB
        torch.cuda.reset_peak_memory_stats(self.gpu_id)
        return peak

    def _begin(self, level: str) -> None:
        self._observe(self._read())
        self._open[level] = torch.cuda.memory_allocated(self.gpu_id) / _MB


def gpu_usage_metrics(gpu_id: int | None = None, *, every: float = 0.5,
                      minibatch: bool = False, epoch: bool = False, experience: bool = False,
                      stream: bool = False) -> list[PluginMetric]:
    """Peak GPU memory (MB) at the chosen granularities (names as Avalanche's
    ``gpu_usage_metrics``; ``gpu_id=None``: the current CUDA device)."""
    flags = dict(minibatch=minibatch, epoch=epoch, experience=experience, stream=stream)
    return [GPUUsageMetric(gpu_id, every=every, **flags)] if any(flags.values()) else []
