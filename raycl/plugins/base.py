"""The plugin base class: every callback of the strategy loop as a typed no-op.

A plugin subclasses :class:`StrategyPlugin` and overrides only the callbacks it needs. The strategy
dispatches an event only to plugins that override it, so unused callbacks cost nothing. A subclass
that defines a ``before_*`` / ``after_*`` method that is not a known callback is rejected when the
class is created, so a misspelled hook fails loudly instead of silently never running.

Callback names, arguments and order are the ones Avalanche users know (see the strategy loop in
``raycl.training.strategy`` for where each fires).

Callbacks receive the strategy typed as :class:`Strategy`, a protocol of what plugins and metrics
use, so that plugins and metrics never import the training loop (which imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn

    from raycl.benchmarks.base import CLDataset, Experience

#: Every callback, in the order the strategy loop can fire them.
HOOKS: tuple[str, ...] = (
    "before_training",
    "before_train_dataset_adaptation",
    "after_train_dataset_adaptation",
    "before_training_exp",
    "before_training_epoch",
    "before_training_iteration",
    "before_forward",
    "after_forward",
    "before_backward",
    "after_backward",
    "before_update",
    "after_update",
    "after_training_iteration",
    "after_training_epoch",
    "after_training_exp",
    "after_training",
    "before_eval",
    "before_eval_dataset_adaptation",
    "after_eval_dataset_adaptation",
    "before_eval_exp",
    "before_eval_iteration",
    "before_eval_forward",
    "after_eval_forward",
    "after_eval_iteration",
    "after_eval_exp",
    "after_eval",
)

_HOOK_SET = frozenset(HOOKS)


class Clock(Protocol):
    """The strategy's training counters, as plugins and metrics read them (never write)."""

    @property
    def train_iterations(self) -> int:
        """Training iterations over the whole run."""

    @property
    def train_exp_counter(self) -> int:
        """Training experiences finished."""

    @property
    def train_exp_epochs(self) -> int:
        """Epochs finished in the current experience."""

    @property
    def train_exp_iterations(self) -> int:
        """Iterations in the current experience."""

    @property
    def train_epoch_iterations(self) -> int:
        """Iterations in the current epoch."""

    @property
    def total_iterations(self) -> int:
        """Training and evaluation iterations."""


class Strategy(Protocol):
    """The strategy as plugins, metrics and loggers see it (``BaseStrategy`` implements it).

    Plain attributes are the ones a plugin may write: ``mb_x``, ``mb_y``, ``mb_task_id`` (e.g.
    replay concatenation in ``before_training_iteration`` / ``before_forward``), ``mb_output``
    (``after_forward`` / ``after_eval_iteration``), ``loss`` (``before_backward``),
    ``adapted_dataset`` (``after_train_dataset_adaptation``, e.g. GDumb) and ``criterion``
    (swapped for a whole ``train`` / ``eval`` and restored, e.g. CoPE). Plugins may also write
    parameter gradients (``after_backward``) and optimizer state. The properties are read-only
    for plugins.
    """

    # ---- what plugins may write --------------------------------------------------------------
    #: Input of the current minibatch (on ``device``).
    mb_x: Tensor | None
    #: Targets of the current minibatch.
    mb_y: Tensor | None
    #: Per-sample task labels of the current minibatch (long tensor).
    mb_task_id: Tensor | None
    #: The model's output on the current minibatch.
    mb_output: Tensor | None
    #: The loss of the current minibatch (penalties are added to it in ``before_backward``).
    loss: Tensor | None
    #: The dataset of the current experience the loop iterates.
    adapted_dataset: CLDataset | None
    #: The loss function, ``criterion(output, targets)``.
    criterion: Callable[[Tensor, Tensor], Tensor]

    # ---- what plugins only read --------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The trained network."""

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer (plugins may clear or drop parameters' state)."""

    @property
    def device(self) -> torch.device:
        """Where the model and the minibatches live."""

    @property
    def experience(self) -> Experience | None:
        """The experience being trained or evaluated."""

    @property
    def is_training(self) -> bool:
        """``True`` in ``train``, ``False`` in ``eval`` (also during a periodic evaluation)."""

    @property
    def clock(self) -> Clock:
        """The training counters."""

    @property
    def train_mb_size(self) -> int:
        """Training minibatch size."""

    @property
    def train_epochs(self) -> int:
        """Training epochs per experience."""

    @property
    def eval_mb_size(self) -> int:
        """Evaluation minibatch size."""

    @property
    def eval_stream_name(self) -> str:
        """``"<origin>_stream"`` of the stream being evaluated."""

    @property
    def current_eval_stream(self) -> Sequence[Experience]:
        """The experiences of the stream being evaluated."""

    @property
    def plugins(self) -> Sequence[StrategyPlugin]:
        """The strategy's plugins, in firing order (the evaluator not included)."""

    @property
    def evaluator(self) -> StrategyPlugin:
        """The ``EvaluationPlugin``, fired after every plugin."""

    # ---- what plugins may call ---------------------------------------------------------------
    def stop_training(self) -> None:
        """Stop the current experience after the running iteration."""

    def forward(self) -> Tensor:
        """The model's output on ``mb_x`` (with ``mb_task_id`` for multi-task models)."""

    def model_adaptation(self, experience: Experience) -> None:
        """Grow every dynamic module of the model for ``experience``."""

    def make_optimizer(self) -> None:
        """Add parameters the model grew to the optimizer, keeping the state of the others."""


class StrategyPlugin:
    """Base class of every plugin: all callbacks are no-ops taking the strategy.

    Plugins may read any field of the :class:`Strategy` they are given but write only the
    documented ones (``mb_x``, ``mb_y``, ``mb_task_id``, ``mb_output``, ``loss``,
    ``adapted_dataset``, ``criterion``, parameter gradients, and ``stop_training()``). Anything a
    plugin learns belongs in :meth:`state_dict`.
    """

    #: Extra ``before_*`` / ``after_*`` names a subclass may define that are not callbacks.
    helper_methods: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        allowed = _HOOK_SET | cls.helper_methods
        for name, value in vars(cls).items():
            if (name.startswith("before_") or name.startswith("after_")) and callable(value):
                if name not in allowed:
                    raise TypeError(
                        f"{cls.__name__}.{name} is not a strategy callback; "
                        f"known callbacks: {', '.join(HOOKS)}"
                    )

    # ---- which hooks this plugin uses -------------------------------------------------------
    def active_hooks(self) -> frozenset[str]:
        """Names of the callbacks this plugin overrides; the strategy dispatches only these."""
        cls = type(self)
        return frozenset(h for h in HOOKS if getattr(cls, h) is not getattr(StrategyPlugin, h))

    # ---- state ------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Key under which the strategy stores this plugin's state (class name by default)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """What the plugin has learned, as tensors and plain containers (empty by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got keys {list(state)}")

    # ---- training ---------------------------------------------------------------------------
    def before_training(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called once at the start of ``train``."""

    def before_train_dataset_adaptation(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before the experience's training dataset is adapted."""

    def after_train_dataset_adaptation(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after ``strategy.adapted_dataset`` is set; a plugin may replace it."""

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called when data, model and optimizer are ready for the experience."""

    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called at the start of every training epoch."""

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after the minibatch is loaded into ``mb_x``, ``mb_y``, ``mb_task_id``."""

    def before_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before the training forward pass."""

    def after_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after ``mb_output`` is computed."""

    def before_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after ``loss`` is computed; penalties are added to ``strategy.loss`` here."""

    def after_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after gradients are computed; gradient projections happen here."""

    def before_update(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before ``optimizer.step()``."""

    def after_update(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after ``optimizer.step()``."""

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called at the end of every training iteration."""

    def after_training_epoch(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called at the end of every training epoch."""

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called when training on the experience is done."""

    def after_training(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called once at the end of ``train``."""

    # ---- evaluation -------------------------------------------------------------------------
    def before_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called once at the start of ``eval``."""

    def before_eval_dataset_adaptation(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before the evaluation dataset is adapted."""

    def after_eval_dataset_adaptation(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after the evaluation dataset is adapted."""

    def before_eval_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before evaluating one experience."""

    def before_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after an evaluation minibatch is loaded."""

    def before_eval_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called before the evaluation forward pass."""

    def after_eval_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after the evaluation ``mb_output`` is computed."""

    def after_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after the evaluation loss is computed; ``mb_output`` may be replaced here."""

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after evaluating one experience."""

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called once at the end of ``eval``."""
