"""The strategy loop: one file, read top to bottom, every callback visible where it fires.

``BaseStrategy`` trains a model on a stream of experiences and evaluates it, firing the plugin
callbacks in the order Avalanche users know (see shared reference ``algorithms.md``). ``Naive`` is
the loop with no plugins' worth of behaviour of its own: fine-tuning, the lower baseline.

Speed: an experience whose data are in-memory tensors (``TensorCLDataset``) is moved to the device
once and trained by slicing shuffled index batches, with no per-sample ``__getitem__``, collate or
worker start. Callbacks are dispatched only to the plugins that override them, so a plugin-free
run costs what a hand-written loop costs.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from raycl.benchmarks.base import CLDataset, Experience, TensorCLDataset
from raycl.checks import check_bool, check_int
from raycl.evaluation.plugin import default_evaluator
from raycl.plugins.base import HOOKS, StrategyPlugin

#: Version of the layout of :meth:`BaseStrategy.state_dict`; bumped when it changes.
STATE_FORMAT_VERSION = 1

Batch = tuple[Tensor, Tensor, Tensor]


class Clock:
    """Counters of training progress; the strategy advances them after every plugin saw an event."""

    __slots__ = ("train_iterations", "train_exp_counter", "train_exp_epochs",
                 "train_exp_iterations", "train_epoch_iterations", "total_iterations")

    def __init__(self) -> None:
        self.train_iterations = 0  # iterations over the whole run
        self.train_exp_counter = 0  # training experiences finished
        self.train_exp_epochs = 0  # epochs finished in the current experience
        self.train_exp_iterations = 0  # iterations in the current experience
        self.train_epoch_iterations = 0  # iterations in the current epoch
        self.total_iterations = 0  # training and evaluation iterations

    def state_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {k: getattr(self, k) for k in self.__slots__}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters."""
        for k in self.__slots__:
            setattr(self, k, int(state[k]))


class BaseStrategy:
    """A plugin-based continual learner: ``train(experiences)`` then ``eval(stream)``.

    Args:
        model: the network; a ``raycl.models.MultiTaskModule`` is called as
            ``model(x, task_labels)``, any other module as ``model(x)``.
        optimizer: optimizer over the model's parameters; parameters the model grows later
            (new heads) join it. Its state (momentum buffers, Adam moments) is kept across
            experiences unless ``reset_optimizer``.
        criterion: loss function ``criterion(output, targets)``.
        train_mb_size, train_epochs, eval_mb_size: minibatch sizes and epochs per experience.
        device: where the model and the data of each experience live.
        plugins: the plugins, fired in list order, before the evaluator.
        evaluator: an ``EvaluationPlugin``; ``None`` gives ``default_evaluator()``.
        eval_every: -1 never evaluates during ``train``; 0 evaluates ``eval_streams`` after
            every experience; k > 0 every k epochs.
        num_workers: DataLoader workers for datasets that are not tensors.
        reset_optimizer: clear the optimizer's state (momentum buffers, Adam moments, step
            counts) at the start of every training experience, after model adaptation and
            before ``before_training_exp``, as Avalanche up to 0.3 always did (0.4 to 0.6 do it
            only when ``train`` is given ``reset_optimizer_state=True``). The default,
            ``False``, keeps the state across experiences. Hyperparameters in
            ``param_groups`` (learning rate, momentum factor) are never touched. What each
            reference implementation does, and the measured effect: ``docs/methods.md``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
                 train_mb_size: int = 1, train_epochs: int = 1, eval_mb_size: int = 1,
                 device: str | torch.device = "cpu",
                 plugins: Sequence[StrategyPlugin] | None = None, evaluator: Any = None,
                 eval_every: int = -1, *, num_workers: int = 0,
                 reset_optimizer: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        criterion = nn.CrossEntropyLoss() if criterion is None else criterion
        if not callable(criterion):
            raise TypeError("criterion must be callable as criterion(output, targets)")
        self.train_mb_size = check_int("train_mb_size", train_mb_size, minimum=1)
        self.train_epochs = check_int("train_epochs", train_epochs, minimum=1)
        self.eval_mb_size = check_int("eval_mb_size", eval_mb_size, minimum=1)
        self.eval_every = check_int("eval_every", eval_every, minimum=-1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.reset_optimizer = check_bool("reset_optimizer", reset_optimizer)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device: {e}") from None
        plugins = list(plugins or [])
        for p in plugins:
            if not isinstance(p, StrategyPlugin):
                raise TypeError(f"plugins must be StrategyPlugin instances, got {type(p).__name__}")
        if evaluator is None:
            evaluator = default_evaluator()
        elif not isinstance(evaluator, StrategyPlugin):
            raise TypeError("evaluator must be an EvaluationPlugin")

        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.criterion = criterion
        self.plugins: list[StrategyPlugin] = plugins
        self.evaluator = evaluator
        self.clock = Clock()

        # What plugins read and (the documented ones) write during a run.
        self.experience: Experience | None = None
        self.adapted_dataset: CLDataset | None = None
        self.is_training = False
        self.mb_x: Tensor | None = None
        self.mb_y: Tensor | None = None
        self.mb_task_id: Tensor | None = None
        self.mb_output: Tensor | None = None
        self.loss: Tensor | None = None
        self.eval_stream_name = "test_stream"
        self.current_eval_stream: list[Experience] = []
        self._stop_training = False
        self._benchmark: Any = None
        self._hooks: dict[str, tuple[Callable[..., None], ...]] = {}
        self._refresh_dispatch()

    # =============================================================================================
    # Public API
    # =============================================================================================
    @property
    def _criterion(self) -> Callable[[Tensor, Tensor], Tensor]:
        """Avalanche's name for the criterion (plugins ported from Avalanche assign it)."""
        return self.criterion

    @_criterion.setter
    def _criterion(self, value: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.criterion = value

    def stop_training(self) -> None:
        """Ask the loop to stop the current experience after the running iteration."""
        self._stop_training = True

    def train(self, experiences: Experience | Iterable[Experience],
              eval_streams: Sequence[Experience | Sequence[Experience]] | None = None
              ) -> dict[str, Any]:
        """Train on each experience in turn; return the evaluator's last metrics."""
        exps = self._check_experiences(experiences, "experiences")
        self._check_benchmark(exps)
        streams = self._eval_streams(eval_streams, exps)
        self._refresh_dispatch()
        self.is_training = True
        self.model.train()
        self._fire("before_training")
        for exp in exps:
            self._train_exp(exp, streams)
        self._fire("after_training")
        return self.evaluator.get_last_metrics()

    @torch.no_grad()
    def eval(self, exp_list: Experience | Iterable[Experience]) -> dict[str, Any]:
        """Evaluate every experience of ``exp_list``; return the evaluator's last metrics."""
        exps = self._check_experiences(exp_list, "exp_list")
        self._refresh_dispatch()
        was_training = self.is_training
        modes = [(m, m.training) for m in self.model.modules()]
        self.is_training = False
        self.model.eval()
        self.current_eval_stream = exps
        self.eval_stream_name = f"{exps[0].origin_stream}_stream"
        self._fire("before_eval")
        for exp in exps:
            self.experience = exp
            self._fire("before_eval_dataset_adaptation")
            self.adapted_dataset = exp.dataset
            self._fire("after_eval_dataset_adaptation")
            self._fire("before_eval_exp")
            for batch in self._batches(self.adapted_dataset, self.eval_mb_size, shuffle=False):
                self.mb_x, self.mb_y, self.mb_task_id = batch
                self._fire("before_eval_iteration")
                self._fire("before_eval_forward")
                self.mb_output = self.forward()
                self._fire("after_eval_forward")
                self.loss = self.criterion(self.mb_output, self.mb_y)
                self._fire("after_eval_iteration")
                self.clock.total_iterations += 1
            self._fire("after_eval_exp")
        self._fire("after_eval")
        for m, mode in modes:  # restore every module's own mode, not just the root's
            m.train(mode)
        self.is_training = was_training
        return self.evaluator.get_last_metrics()

    # =============================================================================================
    # The training loop
    # =============================================================================================
    def _train_exp(self, exp: Experience, eval_streams: list[list[Experience]]) -> None:
        self.experience = exp
        self._stop_training = False
        self.clock.train_exp_epochs = 0
        self.clock.train_exp_iterations = 0
        self._fire("before_train_dataset_adaptation")
        self.adapted_dataset = exp.dataset
        self._fire("after_train_dataset_adaptation")
        self.model_adaptation(exp)
        self.make_optimizer()
        if self.reset_optimizer:  # the experience starts from a fresh optimizer's state
            self.optimizer.state.clear()
        self.model.train()
        self._fire("before_training_exp")
        for _ in range(self.train_epochs):
            if self._stop_training:
                break
            self._fire("before_training_epoch")
            self.training_epoch()
            self._fire("after_training_epoch")
            self.clock.train_exp_epochs += 1
            if self.eval_every > 0 and self.clock.train_exp_epochs % self.eval_every == 0:
                self._periodic_eval(eval_streams)
        self._fire("after_training_exp")
        self.clock.train_exp_counter += 1
        if self.eval_every == 0:
            self._periodic_eval(eval_streams)

    def training_epoch(self) -> None:
        """One pass over ``adapted_dataset``, firing every iteration callback."""
        self.clock.train_epoch_iterations = 0
        first = self.clock.train_exp_iterations == 0
        for batch in self._batches(self.adapted_dataset, self.train_mb_size, shuffle=True):
            if self._stop_training:
                break
            self.mb_x, self.mb_y, self.mb_task_id = batch
            self._fire("before_training_iteration")
            self.optimizer.zero_grad(set_to_none=True)
            self._fire("before_forward")
            self.mb_output = self.forward()
            self._fire("after_forward")
            if first:
                self._check_output_width()
                first = False
            self.loss = self.criterion(self.mb_output, self.mb_y)
            self._fire("before_backward")
            self.loss.backward()
            self._fire("after_loss_backward")  # closed-form gradient terms join .grad
            self._fire("after_backward")
            self._fire("before_update")
            self.optimizer.step()
            self._fire("after_update")
            self._fire("after_training_iteration")
            clock = self.clock
            clock.train_iterations += 1
            clock.train_exp_iterations += 1
            clock.train_epoch_iterations += 1
            clock.total_iterations += 1

    def forward(self) -> Tensor:
        """The model's output on ``mb_x`` (with ``mb_task_id`` for multi-task models)."""
        if self._multi_task:
            return self.model(self.mb_x, self.mb_task_id)
        return self.model(self.mb_x)

    def model_adaptation(self, experience: Experience) -> None:
        """Grow every dynamic module (e.g. a new head for a new task) for ``experience``."""
        from raycl.models import DynamicModule

        grew = False
        for module in self.model.modules():
            if isinstance(module, DynamicModule):
                module.adaptation(experience)
                grew = True
        if grew:  # new parameters are created on the CPU
            self.model.to(self.device)

    def make_optimizer(self) -> None:
        """Add parameters the model grew to the optimizer and drop ones it no longer has.

        Optimizer state of parameters that stay is kept (as Avalanche 0.4-0.6 do by default);
        the loop clears it at each experience when the strategy has ``reset_optimizer``.
        """
        current = list(self.model.parameters())
        current_ids = {id(p) for p in current}
        known: set[int] = set()
        for group in self.optimizer.param_groups:
            kept = [p for p in group["params"] if id(p) in current_ids]
            for p in group["params"]:
                if id(p) not in current_ids:
                    self.optimizer.state.pop(p, None)
            group["params"] = kept
            known.update(id(p) for p in kept)
        new = [p for p in current if id(p) not in known]
        if new:
            self.optimizer.param_groups[0]["params"].extend(new)

    # =============================================================================================
    # Checkpointing
    # =============================================================================================
    def state_dict(self) -> dict[str, Any]:
        """Everything a run needs to continue exactly: model, optimizer, clock, plugins,
        evaluator and every RNG, as tensors and plain containers (``weights_only`` loadable)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "clock": self.clock.state_dict(),
            "plugins": {key: p.state_dict() for key, p in self._plugin_keys().items()},
            "evaluator": self.evaluator.state_dict(),
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, into a strategy built the same way."""
        version = state.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"state format_version {version!r} is not supported "
                             f"(expected {STATE_FORMAT_VERSION})")
        keys = self._plugin_keys()
        if set(keys) != set(state["plugins"]):
            raise ValueError(f"state has plugins {sorted(state['plugins'])} but this strategy has "
                             f"{sorted(keys)}")
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
        self.make_optimizer()  # heads restored by the model must be in the optimizer first
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock.load_state_dict(state["clock"])
        for key, plugin in keys.items():
            plugin.load_state_dict(state["plugins"][key])
        self.evaluator.load_state_dict(state["evaluator"])
        _set_rng_state(state["rng"])

    # =============================================================================================
    # Internals
    # =============================================================================================
    def _fire(self, hook: str) -> None:
        for callback in self._hooks[hook]:
            callback(self)

    def _refresh_dispatch(self) -> None:
        """Bind, per callback, only the plugins that override it (evaluator last)."""
        from raycl.models import MultiTaskModule

        everyone = [*self.plugins, self.evaluator]
        active = [(p, p.active_hooks()) for p in everyone]
        self._hooks = {h: tuple(getattr(p, h) for p, hooks in active if h in hooks)
                       for h in HOOKS}
        self._multi_task = isinstance(self.model, MultiTaskModule)

    def _plugin_keys(self) -> dict[str, StrategyPlugin]:
        keys: dict[str, StrategyPlugin] = {}
        for p in self.plugins:
            key, n = p.state_key, 1
            while key in keys:  # two plugins of one class: number the later ones
                n += 1
                key = f"{p.state_key}#{n}"
            keys[key] = p
        return keys

    def _batches(self, dataset: CLDataset | None, mb_size: int, shuffle: bool) -> Iterator[Batch]:
        """Minibatches of ``(x, y, task_labels)`` on the device."""
        if dataset is None:
            raise ValueError("no dataset to iterate: adapted_dataset is None")
        if isinstance(dataset, TensorCLDataset):
            return self._tensor_batches(dataset, mb_size, shuffle)
        return self._loader_batches(dataset, mb_size, shuffle)

    def _tensor_batches(self, dataset: TensorCLDataset, mb_size: int,
                        shuffle: bool) -> Iterator[Batch]:
        # Fast path: data moved once; batches are index slices of device tensors. The shuffle
        # is drawn from torch's global CPU generator so a checkpointed RNG state replays it.
        data = dataset.to(self.device)
        x, y, t = data.x, data.targets, data.task_labels
        n = x.shape[0]
        if shuffle:
            order = torch.randperm(n).to(self.device)
            for i in range(0, n, mb_size):
                idx = order[i:i + mb_size]
                yield x[idx], y[idx], t[idx]
        else:
            for i in range(0, n, mb_size):
                yield x[i:i + mb_size], y[i:i + mb_size], t[i:i + mb_size]

    def _loader_batches(self, dataset: CLDataset, mb_size: int, shuffle: bool) -> Iterator[Batch]:
        loader = DataLoader(dataset, batch_size=mb_size, shuffle=shuffle,
                            num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        non_blocking = self.device.type == "cuda"
        for x, y, t in loader:
            yield (x.to(self.device, non_blocking=non_blocking),
                   y.to(self.device, non_blocking=non_blocking),
                   t.to(self.device, non_blocking=non_blocking))

    def _check_output_width(self) -> None:
        # Only a classification criterion indexes output units by class id; a plugin that
        # swaps in another criterion (CoPE's embedding loss) is not held to class ids.
        if not isinstance(self.criterion, (nn.CrossEntropyLoss, nn.NLLLoss)):
            return
        exp = self.experience
        if exp is None or not exp.classes_in_this_experience or self.mb_output is None:
            return
        if self.mb_output.dim() < 2:
            return
        needed = max(exp.classes_in_this_experience) + 1
        if self.mb_output.shape[-1] < needed:
            raise ValueError(
                f"model: output has {self.mb_output.shape[-1]} units but experience "
                f"{exp.current_experience} has class id {needed - 1}; give the model at least "
                f"{needed} outputs")

    def _periodic_eval(self, eval_streams: list[list[Experience]]) -> None:
        saved = (self.experience, self.adapted_dataset)
        for stream in eval_streams:
            self.eval(stream)
        self.experience, self.adapted_dataset = saved
        self.is_training = True
        self.model.train()

    @staticmethod
    def _check_experiences(experiences: Any, name: str) -> list[Experience]:
        exps = [experiences] if isinstance(experiences, Experience) else list(experiences)
        if not exps:
            raise ValueError(f"{name}: no experiences given")
        for e in exps:
            if not isinstance(e, Experience):
                raise TypeError(f"{name} must hold Experience objects, got {type(e).__name__}")
        return exps

    def _check_benchmark(self, exps: list[Experience]) -> None:
        for e in exps:
            if e.origin_stream != "train":
                raise ValueError(f"experiences: train() got an experience of the "
                                 f"{e.origin_stream} stream")
            if self._benchmark is None:
                self._benchmark = e.benchmark
            elif e.benchmark is not self._benchmark:
                raise ValueError("experiences: this experience comes from another benchmark "
                                 "than the ones this strategy trained on")

    def _eval_streams(self, eval_streams: Any, exps: list[Experience]) -> list[list[Experience]]:
        if eval_streams is None:
            return [exps]
        out = []
        for s in eval_streams:
            out.append(self._check_experiences(s, "eval_streams"))
        return out


class Naive(BaseStrategy):
    """Fine-tuning: the loop with no regularisation or memory (the lower baseline).

    Add behaviour with plugins: ``Naive(model, opt, criterion, plugins=[EWCPlugin(100)])``.
    """


# ---- RNG capture ---------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain values."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": (py_version, torch.tensor(py_internal, dtype=torch.int64), py_gauss),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(int(v) for v in py_internal.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss,
                         np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("checkpoint holds CUDA RNG state but the CUDA devices differ; "
                          "CUDA randomness will not replay exactly", stacklevel=2)
