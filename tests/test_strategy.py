"""The strategy loop: hook order, dispatch, resume equivalence, multi-task, bad input, behaviour."""

from __future__ import annotations

import copy
import gc
import inspect
import io
import pickle
import weakref

import pytest
import torch
from torch import nn

from raycl.benchmarks import SplitDigits, SubsetCLDataset, nc_benchmark
from raycl.evaluation import EvaluationPlugin, accuracy_metrics, default_evaluator, loss_metrics
from raycl.models import MultiHeadMLP, SimpleMLP
from raycl.plugins import HOOKS, StrategyPlugin, plugin_spec
from raycl.plugins.base import Clock, Strategy
from raycl.training import Naive


def _tiny_benchmark(n_per_class: int = 6, n_classes: int = 4, n_exp: int = 2, task: bool = False):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 5, generator=g) + y[:, None].float()
    ds = torch.utils.data.TensorDataset(x, y)
    return nc_benchmark(ds, ds, n_exp, task_labels=task, fixed_class_order=list(range(n_classes)),
                        class_ids_from_zero_in_each_exp=task)


def _recorder_class():
    def make(name):
        def hook(self, strategy, **kwargs):
            self.calls.append(name)
            if name == "before_forward":
                # zero_grad ran after before_training_iteration, before the forward pass
                self.grads_cleared.append(all(p.grad is None for p in strategy.model.parameters()))
            if name == "after_training_exp":
                self.exp_counter_seen.append(strategy.clock.train_exp_counter)
        return hook

    return type("Recorder", (StrategyPlugin,), {h: make(h) for h in HOOKS})


def _naive(model=None, plugins=None, evaluator=None, **kw):
    model = model or nn.Linear(5, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kw.setdefault("train_mb_size", 6)
    kw.setdefault("eval_mb_size", 12)
    return Naive(model, opt, nn.CrossEntropyLoss(), plugins=plugins,
                 evaluator=evaluator if evaluator is not None else EvaluationPlugin(), **kw)


def test_hooks_fire_in_reference_order():
    bench = _tiny_benchmark()  # 2 experiences of 12 samples -> 2 iterations of 6 per epoch
    rec = _recorder_class()()
    rec.calls, rec.grads_cleared, rec.exp_counter_seen = [], [], []
    strategy = _naive(plugins=[rec])
    strategy.train(bench.train_stream)
    strategy.eval(bench.test_stream[:1])

    iteration = ["before_training_iteration", "before_forward", "after_forward",
                 "before_backward", "after_loss_backward", "after_backward", "before_update",
                 "after_update", "after_training_iteration"]
    exp = (["before_train_dataset_adaptation", "after_train_dataset_adaptation",
            "before_training_exp", "before_training_epoch"] + iteration * 2
           + ["after_training_epoch", "after_training_exp"])
    eval_it = ["before_eval_iteration", "before_eval_forward", "after_eval_forward",
               "after_eval_iteration"]
    expected = (["before_training"] + exp * 2 + ["after_training", "before_eval",
                "before_eval_dataset_adaptation", "after_eval_dataset_adaptation",
                "before_eval_exp"] + eval_it + ["after_eval_exp", "after_eval"])
    assert rec.calls == expected
    assert all(rec.grads_cleared)
    # the clock advances after plugins saw the event
    assert rec.exp_counter_seen == [0, 1]
    assert strategy.clock.train_exp_counter == 2
    assert strategy.clock.train_iterations == 4


def test_unknown_hook_name_is_rejected_at_class_creation():
    with pytest.raises(TypeError, match="before_trainig_exp"):
        type("Typo", (StrategyPlugin,), {"before_trainig_exp": lambda self, s: None})


def test_only_overriding_plugins_are_dispatched():
    class OnlyForward(StrategyPlugin):
        def before_forward(self, strategy, **kwargs):
            pass

    p = OnlyForward()
    strategy = _naive(plugins=[p])
    holders = [h for h, cbs in strategy._hooks.items()
               if any(getattr(cb, "__self__", None) is p for cb in cbs)]
    assert holders == ["before_forward"]
    assert p.active_hooks() == {"before_forward"}


def test_naive_has_every_member_of_the_strategy_protocol():
    # Plugins and metrics are typed against the Strategy protocol, not the loop: a member the
    # loop lacked, or whose method took other arguments, would fail only when a plugin ran.
    strategy = _naive()
    for proto, obj in ((Strategy, strategy), (Clock, strategy.clock)):
        declared = {n: v for n, v in vars(proto).items() if not n.startswith("_")}
        members = set(proto.__annotations__) | set(declared)
        for name in members:
            assert hasattr(obj, name), name
            value = declared.get(name)
            if callable(value):  # a method: same parameters (less ``self``)
                expected = list(inspect.signature(value).parameters)[1:]
                assert list(inspect.signature(getattr(obj, name)).parameters) == expected, name
    assert {"mb_x", "criterion", "clock", "experience", "stop_training", "forward"} <= (
        set(Strategy.__annotations__) | set(vars(Strategy)))


def test_eval_restores_each_module_mode_and_train_returns_metrics():
    bench = _tiny_benchmark()
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.1), nn.Linear(8, 4))
    strategy = _naive(model, evaluator=EvaluationPlugin(accuracy_metrics(experience=True,
                                                                          stream=True)))
    strategy.train(bench.train_stream[0])
    model[1].eval()  # a user froze dropout on purpose
    metrics = strategy.eval(bench.test_stream)
    assert model.training and not model[1].training
    assert "Top1_Acc_Stream/eval_phase/test_stream/Task000" in metrics
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in metrics


def test_stop_training_ends_the_experience():
    class StopAfterOne(StrategyPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            strategy.stop_training()

    bench = _tiny_benchmark()
    strategy = _naive(plugins=[StopAfterOne()], train_epochs=3)
    strategy.train(bench.train_stream)
    assert strategy.clock.train_iterations == 2  # one per experience


def test_eval_every_zero_evaluates_after_each_experience():
    bench = _tiny_benchmark()
    ev = EvaluationPlugin(accuracy_metrics(stream=True))
    strategy = _naive(evaluator=ev, eval_every=0)
    strategy.train(bench.train_stream, eval_streams=[bench.test_stream])
    xs, _ = ev.get_all_metrics()["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert len(xs) == 2


def _run(bench, stop_after=None, multi_head=False, seed=0, **strategy_kw):
    """Train through the stream, evaluating the whole test stream after each experience.

    With ``stop_after=k`` the run is checkpointed after experience k into bytes, rebuilt from
    scratch (other initial weights) and resumed from the checkpoint. ``strategy_kw`` go to
    ``Naive`` (both times).
    """
    def build(init_seed):
        torch.manual_seed(init_seed)
        if multi_head:
            model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1, drop_rate=0.2)
        else:
            model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                              loss_metrics(experience=True, stream=True))
        return Naive(model, opt, train_mb_size=16, train_epochs=2, eval_mb_size=64,
                     evaluator=ev, **strategy_kw)

    torch.manual_seed(seed)
    strategy = build(seed)
    for i, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        metrics = strategy.eval(bench.test_stream)
        if stop_after == i:
            buf = io.BytesIO()
            torch.save(strategy.state_dict(), buf)
            buf.seek(0)
            del strategy
            torch.manual_seed(1234)  # the resumed process starts from another RNG state
            strategy = build(seed + 99)
            strategy.load_state_dict(torch.load(buf, weights_only=True))
    params = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    return metrics, strategy.evaluator.get_all_metrics(), params


@pytest.mark.parametrize("multi_head", [False, True], ids=["class-il", "task-il"])
def test_resumed_run_equals_uninterrupted_run(multi_head):
    bench = SplitDigits(n_experiences=5, return_task_id=multi_head, seed=0)
    full = _run(bench, multi_head=multi_head)
    resumed = _run(bench, stop_after=2, multi_head=multi_head)
    assert full[0] == resumed[0]
    assert full[1] == resumed[1]
    assert full[2].keys() == resumed[2].keys()
    for k in full[2]:
        assert torch.equal(full[2][k], resumed[2][k]), k


def test_resumed_run_equals_uninterrupted_run_with_reset_optimizer():
    bench = SplitDigits(n_experiences=5, seed=0)
    full = _run(bench, reset_optimizer=True)
    resumed = _run(bench, stop_after=1, reset_optimizer=True)
    assert full[0] == resumed[0]
    assert full[1] == resumed[1]
    for k in full[2]:
        assert torch.equal(full[2][k], resumed[2][k]), k


class _OptimizerProbe(StrategyPlugin):
    """Records, per experience, the optimizer's state when the experience starts, whether the
    first update's state is that of a fresh optimizer, and the first layer's state at the end."""

    def __init__(self, fresh):
        self.fresh = fresh  # fresh(optimizer_state_of_p, p) -> bool
        self.entries_at_start, self.fresh_first_step, self.start, self.end = [], [], [], []

    def before_training_exp(self, strategy, **kwargs):
        self.entries_at_start.append(len(strategy.optimizer.state))
        p = next(strategy.model.parameters())
        self.start.append({k: v.clone() for k, v in strategy.optimizer.state.get(p, {}).items()})

    def after_update(self, strategy, **kwargs):
        if strategy.clock.train_exp_iterations == 0:
            p = next(strategy.model.parameters())
            self.fresh_first_step.append(self.fresh(strategy.optimizer.state[p], p))

    def after_training_exp(self, strategy, **kwargs):
        p = next(strategy.model.parameters())
        self.end.append({k: v.clone() for k, v in strategy.optimizer.state[p].items()})


_OPTIMIZERS = {
    # a fresh SGD's first step copies the gradient into the momentum buffer
    "sgd-momentum": (lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                     lambda state, p: torch.equal(state["momentum_buffer"], p.grad)),
    # a fresh Adam's first step is step 1
    "adam": (lambda params: torch.optim.Adam(params, lr=1e-3),
             lambda state, p: int(state["step"]) == 1),
}


def _train_probed(optimizer, **strategy_kw):
    make_opt, fresh = _OPTIMIZERS[optimizer]
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=5, seed=0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=16, drop_rate=0)
    probe = _OptimizerProbe(fresh)
    strategy = Naive(model, make_opt(model.parameters()), train_mb_size=32, train_epochs=1,
                     plugins=[probe], evaluator=EvaluationPlugin(), **strategy_kw)
    strategy.train(bench.train_stream[:3])
    return probe, model


@pytest.mark.parametrize("optimizer", list(_OPTIMIZERS))
def test_reset_optimizer_clears_the_state_at_every_experience(optimizer):
    probe, reset_model = _train_probed(optimizer, reset_optimizer=True)
    assert probe.entries_at_start == [0, 0, 0]  # nothing carried into before_training_exp
    assert probe.fresh_first_step == [True, True, True]
    assert probe.start == [{}, {}, {}]

    kept, kept_model = _train_probed(optimizer, reset_optimizer=False)
    n_params = len(list(kept_model.parameters()))
    assert kept.entries_at_start == [0, n_params, n_params]
    assert kept.fresh_first_step == [True, False, False]
    for start, end in zip(kept.start[1:], kept.end[:-1]):  # carried over unchanged
        assert start.keys() == end.keys()
        assert all(torch.equal(start[k], end[k]) for k in start)
    # the switch changes training from the second experience on
    assert any(not torch.equal(a, b) for a, b in zip(reset_model.parameters(),
                                                     kept_model.parameters()))


def test_reset_optimizer_false_is_the_default_behaviour():
    _, default = _train_probed("sgd-momentum")
    _, explicit = _train_probed("sgd-momentum", reset_optimizer=False)
    for a, b in zip(default.parameters(), explicit.parameters()):
        assert torch.equal(a, b)


def test_multi_head_heads_appear_and_optimizer_keeps_state():
    bench = SplitDigits(n_experiences=5, return_task_id=True, seed=0)
    model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = Naive(model, opt, train_mb_size=32, train_epochs=3,
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True)))
    strategy.train(bench.train_stream[0])
    shared = next(model.parameters())
    buf_after_first = opt.state[shared]["momentum_buffer"].clone()
    heads_after_first = len(list(model.parameters()))
    strategy.train(bench.train_stream[1])
    assert len(list(model.parameters())) > heads_after_first  # a new head appeared
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.parameters())
    # the shared layer's momentum was carried over, then updated (not reset to a fresh buffer)
    assert "momentum_buffer" in opt.state[shared]
    assert not torch.equal(opt.state[shared]["momentum_buffer"], buf_after_first)
    metrics = strategy.eval(bench.test_stream)
    accs = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"]
            for t in range(2)]
    assert min(accs) > 0.8  # task-IL bookkeeping: each trained head classifies its own task


def test_class_il_forgets_first_experience_and_task_il_does_not_break():
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=2, seed=0, fixed_class_order=list(range(10)))
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = Naive(model, opt, train_mb_size=32, train_epochs=4, eval_mb_size=256,
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True)))
    key = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"
    strategy.train(bench.train_stream[0])
    before = strategy.eval(bench.test_stream[:1])[key]
    strategy.train(bench.train_stream[1])
    after = strategy.eval(bench.test_stream[:1])[key]
    assert before > 0.85
    assert after < 0.3  # class-IL: the classes of experience 0 are overwritten


def test_dataloader_path_trains_non_tensor_datasets():
    bench = _tiny_benchmark()
    exp = bench.train_stream[0]
    ds = exp.dataset
    exp.dataset = SubsetCLDataset([(ds.x[i], int(ds.targets[i])) for i in range(len(ds))],
                                  torch.arange(len(ds)), ds.targets, ds.task_labels)
    strategy = _naive(evaluator=default_evaluator())
    strategy.train(exp)
    assert strategy.clock.train_iterations == 2


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("kw, name", [({"train_mb_size": 0}, "train_mb_size"),
                                      ({"train_epochs": 0}, "train_epochs"),
                                      ({"eval_mb_size": -1}, "eval_mb_size"),
                                      ({"eval_every": -2}, "eval_every")])
def test_bad_sizes_name_the_parameter(kw, name):
    with pytest.raises(ValueError, match=name):
        _naive(**kw)


def test_bad_types_name_the_parameter():
    with pytest.raises(TypeError, match="optimizer"):
        Naive(nn.Linear(2, 2), "sgd")
    with pytest.raises(TypeError, match="reset_optimizer"):
        _naive(reset_optimizer=1)
    with pytest.raises(TypeError, match="plugins"):
        _naive(plugins=["ewc"])
    with pytest.raises(TypeError, match="experiences"):
        _naive().train([1, 2])


def test_experience_from_another_benchmark_is_rejected():
    a, b = _tiny_benchmark(), _tiny_benchmark()
    strategy = _naive()
    strategy.train(a.train_stream[0])
    with pytest.raises(ValueError, match="another benchmark"):
        strategy.train(b.train_stream[1])


def test_model_too_small_for_the_classes_is_rejected():
    bench = _tiny_benchmark()
    strategy = _naive(model=nn.Linear(5, 2))
    with pytest.raises(ValueError, match="model: output has 2 units"):
        strategy.train(bench.train_stream[1])


def test_checkpoint_of_other_plugins_is_rejected():
    class P(StrategyPlugin):
        def before_forward(self, strategy, **kwargs):
            pass

    state = _naive(plugins=[P()]).state_dict()
    with pytest.raises(ValueError, match="plugins"):
        _naive().load_state_dict(state)


# ---- plugin_spec ---------------------------------------------------------------------------------
class _Configured(StrategyPlugin):
    """Hyperparameters kept as attributes (one normalised), one kept under another name, one
    changed by the constructor, one never kept."""

    def __init__(self, lam, mode="a", schedule=(1, 2), *, net=None, flag=False, unkept=3):
        self.lam = float(lam)
        self.mode = mode
        self._schedule = list(schedule)
        self.net = net
        self.flag = True  # the constructor overrides what it was given


def test_plugin_spec_lists_every_parameter_with_its_value():
    spec = plugin_spec(_Configured(2, schedule=[0.5, torch.ones(3)], net=nn.Linear(2, 2)))
    assert spec == ("_Configured(lam=2.0, mode='a', schedule=[0.5, <Tensor>], net=<Linear>, "
                    "flag=False, unkept=3)")
    assert plugin_spec(_Configured(1e-3, "b", unkept=[1, "x", None])) == (
        "_Configured(lam=0.001, mode='b', schedule=(1, 2), net=None, flag=False, "
        "unkept=[1, 'x', None])")


def test_plugin_spec_survives_copies_and_keeps_no_reference_to_its_arguments():
    net = nn.Linear(2, 2)
    alive = weakref.ref(net)
    plugin = _Configured(1, unkept=net)  # the plugin itself does not keep ``unkept``
    spec = plugin_spec(plugin)
    assert spec.endswith("unkept=<Linear>)")
    del net
    gc.collect()
    assert alive() is None  # the record holds the class name, not the module
    assert plugin_spec(copy.deepcopy(plugin)) == spec
    assert plugin_spec(pickle.loads(pickle.dumps(plugin))) == spec


def test_plugin_spec_of_varargs_and_of_objects_without_a_record():
    class Many(StrategyPlugin):
        def __init__(self, *parts, size=1, **extra):
            self.size = size

    assert plugin_spec(Many(1, "b", size=2, x=[3])) == "Many(*parts=(1, 'b'), size=2, x=[3])"
    assert plugin_spec(Many()) == "Many(size=1)"

    class Plain:  # not a StrategyPlugin: attributes only
        def __init__(self, size, other):
            self.size = size

    assert plugin_spec(Plain(4, 5)) == "Plain(size=4, other=<unknown>)"
