"""The plugin base class: every callback of the strategy loop as a typed no-op.

A plugin subclasses :class:`StrategyPlugin` and overrides only the callbacks it needs. The strategy
dispatches an event only to plugins that override it, so unused callbacks cost nothing. A subclass
that defines a ``before_*`` / ``after_*`` method that is not a known callback is rejected when the
class is created, so a misspelled hook fails loudly instead of silently never running.

Callback names, arguments and order are the ones Avalanche users know (see the strategy loop in
``raycl.training.strategy`` for where each fires).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from raycl.training.strategy import BaseStrategy

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


class StrategyPlugin:
    """Base class of every plugin: all callbacks are no-ops taking the strategy.

    Plugins may read any strategy field but write only the documented ones (``mb_x``, ``mb_y``,
    ``mb_task_id``, ``mb_output``, ``loss``, ``adapted_dataset``, parameter gradients, and
    ``stop_training()``). Anything a plugin learns belongs in :meth:`state_dict`.
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
    def before_training(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called once at the start of ``train``."""

    def before_train_dataset_adaptation(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before the experience's training dataset is adapted."""

    def after_train_dataset_adaptation(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after ``strategy.adapted_dataset`` is set; a plugin may replace it."""

    def before_training_exp(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called when data, model and optimizer are ready for the experience."""

    def before_training_epoch(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called at the start of every training epoch."""

    def before_training_iteration(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after the minibatch is loaded into ``mb_x``, ``mb_y``, ``mb_task_id``."""

    def before_forward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before the training forward pass."""

    def after_forward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after ``mb_output`` is computed."""

    def before_backward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after ``loss`` is computed; penalties are added to ``strategy.loss`` here."""

    def after_backward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after gradients are computed; gradient projections happen here."""

    def before_update(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before ``optimizer.step()``."""

    def after_update(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after ``optimizer.step()``."""

    def after_training_iteration(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called at the end of every training iteration."""

    def after_training_epoch(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called at the end of every training epoch."""

    def after_training_exp(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called when training on the experience is done."""

    def after_training(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called once at the end of ``train``."""

    # ---- evaluation -------------------------------------------------------------------------
    def before_eval(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called once at the start of ``eval``."""

    def before_eval_dataset_adaptation(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before the evaluation dataset is adapted."""

    def after_eval_dataset_adaptation(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after the evaluation dataset is adapted."""

    def before_eval_exp(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before evaluating one experience."""

    def before_eval_iteration(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after an evaluation minibatch is loaded."""

    def before_eval_forward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called before the evaluation forward pass."""

    def after_eval_forward(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after the evaluation ``mb_output`` is computed."""

    def after_eval_iteration(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after the evaluation loss is computed; ``mb_output`` may be replaced here."""

    def after_eval_exp(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called after evaluating one experience."""

    def after_eval(self, strategy: BaseStrategy, **kwargs: Any) -> None:
        """Called once at the end of ``eval``."""
