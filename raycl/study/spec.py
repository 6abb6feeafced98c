"""What a study file declares: the :class:`Study` dataclass and the specs it is made of.

A study file is plain Python that builds one ``study = Study(...)``. Every field has a docstring
under it (CleanRL style), and an unknown keyword is refused with the field named, so a typo never
silently falls back to a default::

    from ray import tune
    from raycl.plugins import EWCPlugin
    from raycl.study import Arm, Study

    study = Study(
        name="ewc_demo",
        arms=[Arm("naive", baseline=True),
              Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"])],
                  {"ewc_lambda": tune.loguniform(1.0, 1e4)})],
    )

The specs hold only plain values (they travel to the trials); the arms' plugin factories are the
only code, and every trial process loads them from the study file itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "BENCHMARKS",
    "MODELS",
    "OPTIMIZERS",
    "Arm",
    "Benchmark",
    "Model",
    "Optimizer",
    "Resources",
    "Study",
    "UnknownFieldError",
    "no_plugins",
]

#: Benchmark names a :class:`Benchmark` accepts, with the scenarios each supports.
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "split_digits": ("class", "task"),
    "permuted_digits": ("domain", "task"),
    "rotated_digits": ("domain", "task"),
    "split_mnist": ("class", "task"),
    "split_fashion_mnist": ("class", "task"),
    "permuted_mnist": ("domain", "task"),
    "split_cifar10": ("class", "task"),
    "split_cifar100": ("class", "task"),
}

#: Model names a :class:`Model` accepts ("auto" picks one from the data and the scenario).
MODELS: tuple[str, ...] = ("auto", "mlp", "multihead_mlp", "cnn", "resnet18",
                           "multihead_resnet18")

#: Optimizer names an :class:`Optimizer` accepts.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")


class UnknownFieldError(TypeError):
    """A spec was given a keyword that is not one of its fields."""

    def __init__(self, cls_name: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"{cls_name} has no field {name!r}{hint}; fields: {', '.join(known)}")
        self.cls_name = cls_name
        self.name = name
        self.hint = hint


_T = TypeVar("_T")


def _strict(cls: type[_T]) -> type[_T]:
    """Make a dataclass refuse unknown keywords with :class:`UnknownFieldError`.

    The generated ``__init__`` raises a bare ``TypeError`` that does not say which spec or
    field; the loader needs both for its one-line error.
    """
    init = cls.__init__
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in known:
                raise UnknownFieldError(cls.__name__, name, known)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def no_plugins(config: Mapping[str, Any]) -> list[Any]:
    """The plugins of a baseline arm: none (plain fine-tuning)."""
    return []


@_strict
@dataclass
class Benchmark:
    """Which continual-learning benchmark the trials train on."""

    name: str = "split_digits"
    """One of :data:`BENCHMARKS`. The ``*_digits`` ones are embedded (scikit-learn), MNIST and
    CIFAR need their files under ``root`` (or ``download=True``)."""
    n_experiences: int = 5
    """Number of experiences (must divide the number of classes for split benchmarks)."""
    scenario: str | None = None
    """'class' (class-incremental, single head), 'task' (task labels, class ids from zero in
    each experience) or 'domain' (permuted/rotated, labels unchanged); None: 'class' for split
    benchmarks, 'domain' for permuted/rotated ones."""
    seed: int | None = 0
    """Seeds the class order / permutations / angles; None: the trial's seed (the stream then
    differs between seeds)."""
    root: str | None = None
    """Dataset folder for MNIST/CIFAR (default ``$RAYCL_DATA`` or ``~/.raycl/data``); on a
    cluster it must exist on every worker node."""
    download: bool = False
    """Download missing MNIST/CIFAR files (needs torchvision)."""

    @property
    def resolved_scenario(self) -> str:
        """The scenario, with None resolved to the benchmark's natural one."""
        if self.scenario is not None:
            return self.scenario
        return "class" if self.name.startswith("split_") else "domain"


@_strict
@dataclass
class Model:
    """The network every trial trains (built after seeding, so initial weights follow the seed)."""

    name: str = "auto"
    """One of :data:`MODELS`. 'auto': an MLP for flat inputs and a reduced ResNet-18 for
    images, multi-head when the scenario is 'task'."""
    hidden_size: int = 256
    """Units per hidden layer of the MLPs."""
    hidden_layers: int = 2
    """Hidden layers of the MLPs."""
    drop_rate: float = 0.0
    """Dropout rate of the MLPs and the CNN, in [0, 1)."""


@_strict
@dataclass
class Optimizer:
    """The optimizer; a searched ``lr``, ``momentum`` or ``weight_decay`` in an arm's space
    overrides the value here."""

    name: str = "sgd"
    """One of :data:`OPTIMIZERS`."""
    lr: float = 0.05
    """Learning rate (> 0)."""
    momentum: float = 0.9
    """SGD momentum, in [0, 1)."""
    weight_decay: float = 0.0
    """L2 weight decay (>= 0)."""


@_strict
@dataclass
class Resources:
    """What each trial asks Ray for."""

    gpus_per_trial: float | None = None
    """GPUs per trial (fractions pack several trials on one GPU); None: 1 when the cluster has
    GPUs when the study starts, else 0 (CPU trials, GPUs hidden from them)."""
    cpus_per_trial: float = 1.0
    """CPUs per trial; a CPU trial uses this many torch threads."""


@_strict
@dataclass
class Arm:
    """One method to compare: a name, its plugins as a function of the sampled config, and the
    Ray Tune search space of that config."""

    name: str
    """Arm name (letters, digits, '_', '-'); a column value in every results table."""
    plugins: Callable[..., list[Any]] = no_plugins
    """``plugins(config) -> list[StrategyPlugin]``, called in each trial with the sampled
    config (a dict of plain values). A factory taking two arguments gets the model too
    (``plugins(config, model)``), for plugins such as CWR* that need it."""
    space: dict[str, Any] = field(default_factory=dict)
    """Search space: name -> a Ray Tune domain (``tune.loguniform(...)``, ``tune.choice``,
    ``tune.grid_search``, ...) or a constant (str, int, float, bool). The reserved names
    ``lr``, ``momentum``, ``weight_decay``, ``train_epochs`` and ``train_mb_size`` override the
    study's values for this arm."""
    baseline: bool = False
    """A baseline arm (e.g. naive fine-tuning) may have an empty space; any other arm must
    search something, so that a forgotten space is an error rather than a single run."""


@_strict
@dataclass
class Study:
    """A hyperparameter study: arms x sampled configs x seeds, each combination one Ray Tune
    trial that trains on every experience of the benchmark and reports after each one."""

    name: str
    """Study name: the results go to ``<storage>/<name>/`` (letters, digits, '_', '-', '.')."""
    arms: list[Arm]
    """The methods compared (at least one)."""
    benchmark: Benchmark = field(default_factory=Benchmark)
    """The benchmark (default: the embedded digits, 5 class-incremental experiences)."""
    model: Model = field(default_factory=Model)
    """The network."""
    optimizer: Optimizer = field(default_factory=Optimizer)
    """Optimizer settings (an arm's space may search ``lr``, ``momentum``, ``weight_decay``)."""
    train_epochs: int = 1
    """Epochs per experience."""
    train_mb_size: int = 32
    """Training minibatch size."""
    eval_mb_size: int = 256
    """Evaluation minibatch size."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Every sampled config runs once with each seed (seeds Python, NumPy and torch, so the
    model's initial weights and the data order)."""
    num_samples: int = 4
    """Configs drawn per arm ('random' and 'optuna'); 'grid' enumerates its grid once. A
    baseline arm with an empty space runs one config."""
    metric: str = "final_avg_accuracy"
    """The metric to optimise and to rank configs by (see ``raycl.study.PRODUCED_METRICS``)."""
    mode: str = "max"
    """'max' or 'min'."""
    scheduler: str | None = None
    """None (every trial runs to the end) or 'asha' (early stopping on experiences, ranking by
    the metric if it is reported after every experience, else by ``avg_accuracy``)."""
    search: str = "random"
    """'random' (each domain sampled ``num_samples`` times, grid_search values crossed),
    'grid' (every non-constant value must be a grid_search) or 'optuna' (TPE per arm, each
    suggested config run with every seed; needs optuna)."""
    search_seed: int = 0
    """Seeds the sampling of the configs, so the trial set is the same on every run."""
    resources: Resources = field(default_factory=Resources)
    """Per-trial resources."""
    max_failures: int = 2
    """Restarts of a failed trial (from its last checkpoint) before it counts as errored."""
    max_concurrent: int | None = None
    """Most trials running at once; None: as many as the resources allow."""
    keep_checkpoints: int | None = None
    """Checkpoints kept per trial, at least 2 (a corrupt last checkpoint falls back to the one
    before it); None keeps all (cheap for small models; a bound forces an experiment-state
    snapshot with every checkpoint, which costs time)."""
    description: str = ""
    """Free text shown by ``--dry-run``."""

