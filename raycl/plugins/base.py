"""The plugin base class: every callback of the strategy loop as a typed no-op.

A plugin subclasses :class:`StrategyPlugin` and overrides only the callbacks it needs. The strategy
dispatches an event only to plugins that override it, so unused callbacks cost nothing. A subclass
that defines a ``before_*`` / ``after_*`` method that is not a known callback is rejected when the
class is created, so a misspelled hook fails loudly instead of silently never running.

Callback names, arguments and order are the ones Avalanche users know (see the strategy loop in
``raycl.training.strategy`` for where each fires).

Callbacks receive the strategy typed as :class:`Strategy`, a protocol of what plugins and metrics
use, so that plugins and metrics never import the training loop (which imports them).

:func:`plugin_spec` writes a plugin's class and constructor arguments on one line, for logs and
results (``EWCPlugin(ewc_lambda=100.0, mode='separate', ...)``).
"""

from __future__ import annotations

import inspect
import numbers
import pathlib
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
    "after_loss_backward",
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
    parameter gradients (add to them in ``after_loss_backward``, edit them in
    ``after_backward``) and optimizer state. The properties are read-only
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

    Hyperparameters are the constructor's arguments. The base class records the arguments a
    plugin was constructed with (in ``__new__``, defaults filled in, before ``__init__`` runs),
    so :func:`plugin_spec` can show every one of them for any subclass; a subclass that keeps a
    hyperparameter as an attribute of the same name (the usual case) has it shown normalised
    (``ewc_lambda=100`` as ``100.0``). Only plain values are recorded (numbers, strings, lists,
    ...); anything else (a model, a tensor, a file) is recorded as its class name, so the record
    holds no reference to it and always pickles.
    """

    #: Extra ``before_*`` / ``after_*`` names a subclass may define that are not callbacks.
    helper_methods: ClassVar[frozenset[str]] = frozenset()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        # None when the arguments do not fit __init__: a copy or an unpickling (which calls
        # __new__ without arguments and then restores the original's record), or a wrong call
        # that __init__ is about to reject.
        try:
            self.__dict__["_spec_arguments"] = _record_arguments(cls, args, kwargs)
        except AttributeError:  # no instance __dict__ (__slots__): nothing recorded
            pass
        return self

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

    def after_loss_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called as soon as ``loss.backward()`` returns, before ``after_backward``.

        ``.grad`` holds autograd's gradient of ``loss``. A plugin that put a term into the loss
        whose gradient it knows in closed form (a quadratic penalty) adds that gradient to
        ``.grad`` here instead of having autograd differentiate it; it only adds, so every
        ``after_backward`` callback sees the gradient of the whole loss."""

    def after_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Called after gradients are complete; gradient projections happen here."""

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


# =================================================================================================
# plugin_spec: a plugin's class and hyperparameters as one line
# =================================================================================================
class _Opaque:
    """A recorded value that is not plain (a model, a tensor, a file): only its class name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __getstate__(self) -> str:
        return self.name

    def __setstate__(self, state: str) -> None:
        self.name = state


_UNKNOWN = _Opaque("unknown")


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """The parameters of ``cls.__init__`` after ``self``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())
    except (TypeError, ValueError):  # a builtin __init__ without a signature
        return []
    return params[1:]


def _record_arguments(cls: type, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``{parameter: plain value}`` of a call ``cls(*args, **kwargs)``, defaults included, or
    None if the call does not fit ``cls.__init__``."""
    params = _init_parameters(cls)
    try:
        bound = inspect.Signature(params).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return {name: _plain(value) for name, value in bound.arguments.items()}


def _plain(value: Any) -> Any:
    """``value`` as plain data: scalars, strings, devices and paths as they are (numpy scalars as
    Python ones), containers copied element by element, anything else an :class:`_Opaque`."""
    if value is None or isinstance(value, (bool, str, _Opaque)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, complex):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return frozenset(_plain(v) for v in value)
    if isinstance(value, set):
        return {_plain(v) for v in value}
    if isinstance(value, pathlib.PurePath):
        return value
    kind = type(value)
    if kind.__module__ == "torch" and kind.__name__ in ("device", "dtype"):
        return value
    return _Opaque(kind.__name__)


def _shown(value: Any) -> str:
    """A plain value as ``repr`` writes it, opaque parts as ``<ClassName>``."""
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_shown(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_shown(k)}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        inner = ", ".join(sorted(_shown(v) for v in value))
        if isinstance(value, frozenset):
            return f"frozenset({{{inner}}})" if value else "frozenset()"
        return f"{{{inner}}}" if value else "set()"
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    """Whether two plain values are equal (``100 == 100.0``; ``[1] != (1,)``)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are not the same
        return False


_MISSING = object()


def _spec_value(plugin: Any, name: str, recorded: dict[str, Any] | None) -> Any:
    """The value :func:`plugin_spec` shows for parameter ``name`` (see its docstring)."""
    try:
        attribute = getattr(plugin, name, _MISSING)
    except Exception:  # noqa: BLE001 - a property that cannot be read now: no attribute
        attribute = _MISSING
    current = _MISSING if attribute is _MISSING else _plain(attribute)
    if recorded is not None and name in recorded:
        given = recorded[name]
        return current if current is not _MISSING and _same(current, given) else given
    return _UNKNOWN if current is _MISSING else current


def plugin_spec(plugin: Any) -> str:
    """The plugin's class name and every constructor argument, defaults included, as one line.

    ``plugin_spec(EWCPlugin(100))`` is ``"EWCPlugin(ewc_lambda=100.0, mode='separate',
    decay_factor=None, keep_importance_data=False, fisher='minibatch')"``: the parameters of
    ``type(plugin).__init__`` in signature order, each ``name=value``. The value is the argument
    the plugin was constructed with (a missing one is its default); where the plugin has an
    attribute of the same name equal to it, that attribute is shown instead, so validated values
    appear normalised (``100`` as ``100.0``). An argument the plugin changed (EWC's
    ``keep_importance_data``, always in effect in separate mode) is shown as given, which is what
    rebuilds the same plugin. Values are written with ``repr``; values that are not plain data
    (models, tensors, storage policies, files) as ``<ClassName>``. ``*args`` appear as
    ``*name=(...)``, ``**kwargs`` as their own ``key=value`` entries.

    Any object works: one that was not built as a :class:`StrategyPlugin` (e.g. a storage
    policy) has no record of its arguments, so each value is its attribute of the same name, or
    ``<unknown>``.
    """
    recorded = vars(plugin).get("_spec_arguments") if hasattr(plugin, "__dict__") else None
    parts = []
    for param in _init_parameters(type(plugin)):
        value = _spec_value(plugin, param.name, recorded)
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            if isinstance(value, dict):
                parts.extend(f"{k}={_shown(v)}" for k, v in value.items())
            continue
        prefix = "*" if param.kind is inspect.Parameter.VAR_POSITIONAL else ""
        if prefix and value == ():
            continue
        parts.append(f"{prefix}{param.name}={_shown(value)}")
    return f"{type(plugin).__name__}({', '.join(parts)})"
