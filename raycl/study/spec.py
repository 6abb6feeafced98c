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
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raycl.benchmarks.registry import BENCHMARKS as _REGISTRY

__all__ = [
    "BENCHMARKS",
    "MODELS",
    "OPTIMIZERS",
    "Arm",
    "Benchmark",
    "Model",
    "Optimizer",
    "PerExperience",
    "Resources",
    "Study",
    "TrialSpec",
    "UnknownFieldError",
    "config_key",
    "make_trial",
    "no_plugins",
    "trial_key",
]

#: Benchmark names a :class:`Benchmark` accepts, with the scenarios each supports (the first is
#: its natural one); each name is an entry of ``raycl.benchmarks.registry.BENCHMARKS``.
BENCHMARKS: dict[str, tuple[str, ...]] = {name: entry.scenarios
                                          for name, entry in _REGISTRY.items()}

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
        self.known = list(known)

    def __reduce__(self) -> tuple[Any, ...]:
        # crosses from a trial process to the driver: rebuilt from its arguments
        return (type(self), (self.cls_name, self.name, self.known))


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
    validation_size: float | int | None = 0.1
    """Held out of every training experience as its validation experience (class-stratified,
    seeded like the stream): a fraction in (0, 1) or a number of samples. Configs are chosen on
    the validation stream (``Study.selection``); None keeps all training data, which only a
    study that selects on 'test' can do."""

    @property
    def resolved_scenario(self) -> str:
        """The scenario, with None resolved to the benchmark's natural one."""
        if self.scenario is not None:
            return self.scenario
        entry = _REGISTRY.get(self.name)
        return entry.default_scenario if entry is not None else "class"


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
class PerExperience:
    """Settings of the continual hyperparameter framework (De Lange et al., TPAMI 2021, sec. 4):
    per experience, (1) maximal plasticity search: fine-tune the previous model on the new
    experience at each learning rate of ``lr_grid``, keep the best validation accuracy A*;
    (2) stability decay: train with the arm's stability hyperparameter at its start value, and
    multiply it by ``alpha`` until the new experience's validation accuracy reaches
    ``(1 - p) * A*``; continue from that model."""

    lr_grid: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.001])
    """Learning rates of the plasticity search."""
    alpha: float = 0.5
    """Decay factor of the stability hyperparameter, in (0, 1)."""
    p: float = 0.2
    """Accepted drop of the new experience's validation accuracy against A*, in [0, 1)."""
    max_decays: int = 8
    """Decays tried before the last (smallest) value is taken anyway."""


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
    joint: bool = False
    """A joint-training upper bound: at every experience the learner trains on all the
    training data seen so far (experiences 0..i together), so it forgets nothing by
    construction. With one in a study, every arm's intransigence (Chaudhry et al. 2018) is
    reported against it."""
    stability: str | None = None
    """'per_experience' selection: the config key of the arm's stability hyperparameter (e.g.
    ``"ewc_lambda"``), set high and decayed per experience (De Lange et al., TPAMI 2021); None
    for an arm without one (it gets the learning-rate search only)."""
    stability_start: float | None = None
    """'per_experience' selection: the stability hyperparameter's first (largest) value."""


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
    callbacks: list[Any] = field(default_factory=list)
    """Ray Tune callbacks added to every Tune run of the study, e.g. experiment trackers:
    ``ray.tune.logger.TBXLoggerCallback()``,
    ``ray.air.integrations.mlflow.MLflowLoggerCallback(...)``,
    ``ray.air.integrations.wandb.WandbLoggerCallback(...)`` (each trial logs one step per
    experience, its config as parameters). The driver uses them; trials never see them."""
    keep_checkpoints: int | None = 2
    """Checkpoints kept per running trial, at least 2 (a corrupt last checkpoint falls back to
    the one before it); None keeps all."""
    keep_final_checkpoint: bool = False
    """Keep a finished trial's last checkpoint (its learner, to load later). Off by default: a
    finished trial is never restarted, so its checkpoints only take disk. The
    ``per_experience`` protocol always keeps them (each step continues the chosen learner)."""
    selection: str = "valid"
    """How each arm's config is chosen, and on which data its reported figures are measured:

    * ``"valid"``: configs ranked by ``metric`` on the validation stream; every figure reported
      for an arm is the test value of the config chosen on validation (with ``confirm_seeds``,
      of its reruns on fresh seeds). Optuna and ASHA see validation values only.
    * ``"test"``: ranked on the test stream itself (optimistic; only when asked, and labelled
      wherever its numbers appear).
    * ``"first_tasks"`` (Chaudhry et al., ICLR 2019): configs searched on the first
      ``tuning_experiences`` experiences only, ranked on their validation data; each arm's
      chosen config is then trained from scratch on the remaining experiences with every seed,
      and only those runs are reported.
    * ``"first_task"`` (Lee et al., 2024): searched on the first experience; the chosen values
      then run on the whole stream with every seed.
    * ``"per_experience"`` (De Lange et al., TPAMI 2021): per experience, a learning-rate search
      with the stability hyperparameter off (:attr:`PerExperience.lr_grid`), then the arm's
      stability hyperparameter decayed from ``Arm.stability_start`` by ``alpha`` until the new
      experience's validation accuracy reaches ``(1 - p)`` times the best fine-tuned one.
    """
    tuning_experiences: int = 3
    """'first_tasks': how many of the first experiences the search sees."""
    confirm_seeds: list[int] | None = None
    """Seeds on which each arm's chosen config is rerun ('valid' and 'test' selection); the
    reported figures then come from these runs. None: 3 seeds after the study's largest for a
    study that searches, none for one that has nothing to choose. ``[]``: no confirmation."""
    per_experience: PerExperience = field(default_factory=lambda: PerExperience())
    """Settings of 'per_experience' selection."""
    reset_optimizer: bool = False
    """Clear the optimizer's state (momentum, Adam moments) at the start of every experience,
    as the SI authors' split-MNIST code does; False keeps it across experiences (Avalanche
    0.6's default). See docs/methods.md."""
    min_seeds: int | None = None
    """A config is ranked only when at least this many of its seeds finished (None: all of
    them); a config with a failed, diverged or early-stopped seed is otherwise never chosen on
    the seeds that survived. With ASHA, a stopped seed has no final metric and counts as not
    finished."""
    interval: str = "t"
    """The confidence interval of reported means: 't' (Student-t over the seeds) or
    'bootstrap' (percentile bootstrap of the mean, seeded)."""
    paired_test: str = "t"
    """The paired test between arms over their shared seeds: 't' (paired t-test) or
    'wilcoxon' (signed-rank); Holm-corrected across the comparisons."""
    description: str = ""
    """Free text shown by ``--dry-run``."""


def trial_key(arm: str, params: Mapping[str, Any], seed: int, **where: Any) -> str:
    """Stable id of (arm, params, seed) and, for trials of a protocol step, of where it runs
    (``phase``, ``stream``, ``init``, ``steps``): the same in every run of the same study."""
    extra = {k: v for k, v in where.items() if v is not None and v != _DEFAULT_WHERE.get(k)}
    text = json.dumps([arm, dict(params), int(seed), *([extra] if extra else [])],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_DEFAULT_WHERE = {"phase": "search"}


def config_key(arm: str, params: Mapping[str, Any]) -> str:
    """Stable id of (arm, params), without the seed."""
    text = json.dumps([arm, dict(params)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TrialSpec:
    """One trial: an arm's config trained with one seed, in one phase of the study's selection
    protocol. Build it with :func:`make_trial`."""

    arm: str
    """The arm's name."""
    params: dict[str, Any]
    """The sampled config (plain Python values), as the arm's plugin factory receives it."""
    seed: int
    """Seeds Python, NumPy and torch in the trial (model init, data order)."""
    trial_key: str
    """:func:`trial_key` of the fields: the trial's id in every results table."""
    phase: str = "search"
    """The protocol phase (``raycl.study.schema.PHASES``)."""
    stream: tuple[int, int] | None = None
    """Train and evaluate on experiences ``[start, stop)`` of the benchmark only (None: all);
    reports keep the benchmark's experience numbers."""
    init: str | None = None
    """A checkpoint (path or URI in the study's storage) whose learner the trial continues from
    (per-experience selection), with the trial's own hyperparameters."""
    steps: int | None = None
    """Train this many experiences (None: to the end of the stream)."""

    @property
    def name(self) -> str:
        """A short readable name: ``<arm>_s<seed>_<first 8 of the key>``."""
        return f"{self.arm}_s{self.seed}_{self.trial_key[:8]}"

    @property
    def config_key(self) -> str:
        """Stable id of (arm, params): the same for every seed and phase of a config."""
        return config_key(self.arm, self.params)


def make_trial(arm: str, params: Mapping[str, Any], seed: int, *, phase: str = "search",
               stream: tuple[int, int] | None = None, init: str | None = None,
               steps: int | None = None) -> TrialSpec:
    """The trial of (arm, params, seed) in ``phase`` (and where it runs), with its key."""
    where = {"phase": phase, "stream": None if stream is None else list(stream), "init": init,
             "steps": steps}
    return TrialSpec(arm, dict(params), int(seed), trial_key(arm, params, seed, **where),
                     phase, None if stream is None else (int(stream[0]), int(stream[1])), init,
                     steps)
