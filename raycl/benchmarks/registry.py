"""The named benchmarks, in one table: adding a benchmark is adding one entry to it.

Each :class:`BenchmarkEntry` says how to build the benchmark (``factory``) and what is known
about it without loading any data (scenarios, sample shape, number of classes, whether its
classes are split over the experiences, whether it needs dataset files), so a study can be
validated, and its models built, before a single file is read.

    >>> from raycl.benchmarks import BENCHMARKS, build_benchmark
    >>> BENCHMARKS["split_digits"].input_shape
    (64,)
    >>> bench = build_benchmark("split_digits", 5, seed=0, task_labels=False)
    >>> tuned = build_benchmark("split_digits", 5, seed=0, task_labels=False,
    ...                         validation_size=0.1)  # adds tuned.valid_stream
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from raycl.checks import check_bool, check_int, check_seed

if TYPE_CHECKING:  # the table is read without torch (study validation, analysis)
    from raycl.benchmarks.base import CLBenchmark

__all__ = ["BENCHMARKS", "SCENARIOS", "BenchmarkEntry", "benchmark_entry", "build_benchmark"]

#: The scenarios an entry may list: 'class' (class-incremental, one head), 'task' (task labels,
#: class ids from zero in each experience), 'domain' (same classes, new input distribution).
SCENARIOS: tuple[str, ...] = ("class", "task", "domain")

#: ``factory(n_experiences, *, seed, task_labels, root, download) -> CLBenchmark``
Factory = Callable[..., "CLBenchmark"]


@dataclass(frozen=True)
class BenchmarkEntry:
    """One named benchmark: how to build it and what is known about it without its data.

    Attributes:
        name: the key of the entry in :data:`BENCHMARKS`.
        factory: ``factory(n_experiences, *, seed, task_labels, root, download)`` builds the
            :class:`CLBenchmark` (``task_labels``: experience ``i`` gets task label ``i``;
            ``root``/``download`` are ignored by embedded benchmarks).
        scenarios: the scenarios it supports; the first is its natural (default) one.
        input_shape: the shape of one sample, e.g. ``(784,)`` or ``(3, 32, 32)``.
        n_classes: the number of classes.
        splits_classes: the classes are divided over the experiences, so the number of
            experiences must divide ``n_classes``; else every experience holds every class.
        embedded: needs no dataset files (ships with a dependency).
    """

    name: str
    factory: Factory
    scenarios: tuple[str, ...]
    input_shape: tuple[int, ...]
    n_classes: int
    splits_classes: bool
    embedded: bool

    def __post_init__(self) -> None:
        # a malformed entry fails at import, not in the middle of a study
        if not self.scenarios or not set(self.scenarios) <= set(SCENARIOS):
            raise ValueError(f"{self.name}: scenarios must be a non-empty tuple of "
                             f"{SCENARIOS}, got {self.scenarios!r}")
        check_int(f"{self.name}: n_classes", self.n_classes, minimum=1)
        if not self.input_shape or not all(isinstance(d, int) and d >= 1
                                           for d in self.input_shape):
            raise ValueError(f"{self.name}: input_shape must be a tuple of ints >= 1, "
                             f"got {self.input_shape!r}")

    @property
    def default_scenario(self) -> str:
        """The natural scenario (the first of :attr:`scenarios`)."""
        return self.scenarios[0]

    def check_n_experiences(self, n_experiences: Any) -> int:
        """``n_experiences`` if this benchmark can be built with it.

        Raises:
            TypeError: not an int.
            ValueError: below 1, or (split benchmarks) not a divisor of ``n_classes``.
        """
        n = check_int("n_experiences", n_experiences, minimum=1)
        if self.splits_classes and self.n_classes % n:
            raise ValueError(f"n_experiences must divide the {self.n_classes} classes of "
                             f"{self.name}, got {n}")
        return n

    def build(self, n_experiences: int, *, seed: int | None, task_labels: bool,
              root: str | Path | None = None, download: bool = False,
              validation_size: float | int | None = None,
              validation_seed: int | None = None) -> CLBenchmark:
        """The benchmark (see :func:`build_benchmark`)."""
        n = self.check_n_experiences(n_experiences)
        seed = check_seed("seed", seed)
        task_labels = check_bool("task_labels", task_labels)
        download = check_bool("download", download)
        validation_seed = check_seed("validation_seed", validation_seed)
        if validation_size is None:  # exactly the factory's benchmark
            return self.factory(n, seed=seed, task_labels=task_labels, root=root,
                                download=download)
        from raycl.benchmarks.validation import (
            benchmark_with_validation_stream,
            check_validation_size,
        )

        check_validation_size(validation_size)  # before any data is loaded
        bench = self.factory(n, seed=seed, task_labels=task_labels, root=root,
                             download=download)
        return benchmark_with_validation_stream(
            bench, validation_size, shuffle=True,
            seed=seed if validation_seed is None else validation_seed)


# ---- factories: one call each, exactly as a user would make it ----------------------------------
# (root and download are accepted by every factory so they share one signature)

def _split_digits(n: int, *, seed: int | None, task_labels: bool, root: Any,
                  download: bool) -> CLBenchmark:
    from raycl.benchmarks.digits import SplitDigits

    return SplitDigits(n, return_task_id=task_labels, seed=seed)


def _permuted_digits(n: int, *, seed: int | None, task_labels: bool, root: Any,
                     download: bool) -> CLBenchmark:
    from raycl.benchmarks.digits import PermutedDigits

    return PermutedDigits(n, seed=seed, return_task_id=task_labels)


def _rotated_digits(n: int, *, seed: int | None, task_labels: bool, root: Any,
                    download: bool) -> CLBenchmark:
    from raycl.benchmarks.digits import RotatedDigits

    return RotatedDigits(n, seed=seed, return_task_id=task_labels)


def _split_mnist(n: int, *, seed: int | None, task_labels: bool, root: Any,
                 download: bool) -> CLBenchmark:
    from raycl.benchmarks.vision import SplitMNIST

    return SplitMNIST(n, return_task_id=task_labels, seed=seed, root=root, download=download)


def _split_fashion_mnist(n: int, *, seed: int | None, task_labels: bool, root: Any,
                         download: bool) -> CLBenchmark:
    from raycl.benchmarks.vision import SplitFashionMNIST

    return SplitFashionMNIST(n, return_task_id=task_labels, seed=seed, root=root,
                             download=download)


def _permuted_mnist(n: int, *, seed: int | None, task_labels: bool, root: Any,
                    download: bool) -> CLBenchmark:
    from raycl.benchmarks.vision import PermutedMNIST

    return PermutedMNIST(n, seed=seed, return_task_id=task_labels, root=root, download=download)


def _split_cifar10(n: int, *, seed: int | None, task_labels: bool, root: Any,
                   download: bool) -> CLBenchmark:
    from raycl.benchmarks.vision import SplitCIFAR10

    return SplitCIFAR10(n, return_task_id=task_labels, seed=seed, root=root, download=download)


def _split_cifar100(n: int, *, seed: int | None, task_labels: bool, root: Any,
                    download: bool) -> CLBenchmark:
    from raycl.benchmarks.vision import SplitCIFAR100

    return SplitCIFAR100(n, return_task_id=task_labels, seed=seed, root=root, download=download)


def _table(*entries: BenchmarkEntry) -> Mapping[str, BenchmarkEntry]:
    table: dict[str, BenchmarkEntry] = {}
    for e in entries:
        if e.name in table:
            raise ValueError(f"benchmark {e.name!r} is registered twice")
        table[e.name] = e
    return MappingProxyType(table)


# Each factory imports its class when called: reading the table needs no torch.
_SPLIT = ("class", "task")
_DOMAIN = ("domain", "task")
_DIGITS, _MNIST, _CIFAR = (64,), (784,), (3, 32, 32)

#: Every named benchmark, by name (read-only; in the order they are listed to users).
BENCHMARKS: Mapping[str, BenchmarkEntry] = _table(
    BenchmarkEntry("split_digits", _split_digits, _SPLIT, _DIGITS, 10,
                   splits_classes=True, embedded=True),
    BenchmarkEntry("permuted_digits", _permuted_digits, _DOMAIN, _DIGITS, 10,
                   splits_classes=False, embedded=True),
    BenchmarkEntry("rotated_digits", _rotated_digits, _DOMAIN, _DIGITS, 10,
                   splits_classes=False, embedded=True),
    BenchmarkEntry("split_mnist", _split_mnist, _SPLIT, _MNIST, 10,
                   splits_classes=True, embedded=False),
    BenchmarkEntry("split_fashion_mnist", _split_fashion_mnist, _SPLIT, _MNIST, 10,
                   splits_classes=True, embedded=False),
    BenchmarkEntry("permuted_mnist", _permuted_mnist, _DOMAIN, _MNIST, 10,
                   splits_classes=False, embedded=False),
    BenchmarkEntry("split_cifar10", _split_cifar10, _SPLIT, _CIFAR, 10,
                   splits_classes=True, embedded=False),
    BenchmarkEntry("split_cifar100", _split_cifar100, _SPLIT, _CIFAR, 100,
                   splits_classes=True, embedded=False),
)


def benchmark_entry(name: str) -> BenchmarkEntry:
    """The entry of the benchmark called ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no such benchmark (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"benchmark name must be a str, got {type(name).__name__}")
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; choose one of "
                         f"{', '.join(BENCHMARKS)}") from None


def build_benchmark(name: str, n_experiences: int, *, seed: int | None, task_labels: bool,
                    root: str | Path | None = None, download: bool = False,
                    validation_size: float | int | None = None,
                    validation_seed: int | None = None) -> CLBenchmark:
    """The benchmark called ``name`` with ``n_experiences`` experiences.

    Args:
        name: a key of :data:`BENCHMARKS`.
        n_experiences: number of experiences (a divisor of the classes for split benchmarks).
        seed: seeds the class order / permutations / angles; None draws fresh ones.
        task_labels: experience ``i`` gets task label ``i`` (the 'task' scenario; split
            benchmarks then also number each experience's classes from zero).
        root, download: dataset folder and whether to download missing files (ignored by
            embedded benchmarks).
        validation_size: None (default) builds the benchmark without a validation stream,
            its data unchanged. Else a float in (0, 1) (fraction) or an int >= 1 (samples)
            held out of each training experience into ``valid_stream``, class-stratified and
            at random (see :func:`~raycl.benchmarks.benchmark_with_validation_stream`).
        validation_seed: seeds the validation split; None reuses ``seed`` (so a seeded
            benchmark always gets the same split, and ``seed=None`` with no
            ``validation_seed`` a fresh one). Give it to fix the split of a ``seed=None``
            benchmark, or to vary the split while keeping the benchmark.
    """
    return benchmark_entry(name).build(n_experiences, seed=seed, task_labels=task_labels,
                                       root=root, download=download,
                                       validation_size=validation_size,
                                       validation_seed=validation_seed)
