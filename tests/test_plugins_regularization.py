"""EWC (separate, online), RWalk, SI and LwF: exact maths, checkpoints, new and grown heads,
and the behaviour each method exists for (less forgetting than naive fine-tuning)."""

from __future__ import annotations

import copy
import functools
import io
import statistics
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from raycl.benchmarks import PermutedDigits, SplitDigits, TensorCLDataset
from raycl.evaluation import EvaluationPlugin, accuracy_metrics, loss_metrics
from raycl.models import MultiHeadMLP, SimpleMLP
from raycl.plugins import (
    EWCPlugin,
    LwFPlugin,
    PenaltyStabilityWarning,
    RWalkPlugin,
    StrategyPlugin,
    SynapticIntelligencePlugin,
)
from raycl.plugins._params import QuadraticPenalty
from raycl.plugins._stability import warn_if_unstable
from raycl.training import Naive


def _hand_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _fake_strategy(model: nn.Module, exp: int = 1, it: int = 0) -> SimpleNamespace:
    clock = SimpleNamespace(train_exp_counter=exp, train_iterations=it)
    return SimpleNamespace(model=model, loss=torch.zeros(()), clock=clock,
                           device=torch.device("cpu"), optimizer=None)


def _random_like(model: nn.Module, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {n: scale * torch.rand_like(p) for n, p in model.named_parameters()}


# ---- EWC ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_ewc_separate_penalty_is_lambda_sum_f_delta_squared(lam):
    model = _hand_model()
    plugin = EWCPlugin(lam)
    fs, anchors = [], []
    for t in range(3):  # three past experiences, each with its own F and theta*
        fs.append(_random_like(model))
        anchors.append({n: torch.randn_like(p) for n, p in model.named_parameters()})
        plugin.update_importances(fs[-1], t)
        plugin.saved_params[t] = anchors[-1]
    strategy = _fake_strategy(model, exp=3)
    params = dict(model.named_parameters())
    strategy.loss = sum(p.sum() for p in params.values()) * 0.0  # a loss reaching every weight
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    expected = lam * sum((f[n] * (p - a[n]) ** 2).sum()
                         for f, a in zip(fs, anchors) for n, p in params.items())
    torch.testing.assert_close(strategy.loss.detach(), expected.detach(), rtol=1e-5, atol=0)
    strategy.loss.backward()
    plugin.after_loss_backward(strategy)  # the penalty's closed-form gradient joins .grad
    plugin.after_backward(strategy)
    want = torch.autograd.grad(expected, list(params.values())) if lam else [
        torch.zeros_like(p) for p in params.values()]
    for p, w in zip(params.values(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)


def test_online_ewc_decays_importances_and_uses_the_latest_anchor():
    model = _hand_model()
    d = 0.5
    plugin = EWCPlugin(2.0, mode="online", decay_factor=d)
    fs = [_random_like(model) for _ in range(3)]
    for t, f in enumerate(fs):
        plugin.update_importances(f, t)
        plugin.saved_params[t] = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    assert list(plugin.importances) == [2]  # only the decayed sum is kept
    for n in fs[0]:
        torch.testing.assert_close(plugin.importances[2][n],
                                   d * d * fs[0][n] + d * fs[1][n] + fs[2][n])
    strategy = _fake_strategy(model, exp=3)
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    expected = 2.0 * sum((plugin.importances[2][n] * (p - plugin.saved_params[2][n]) ** 2).sum()
                         for n, p in model.named_parameters())
    torch.testing.assert_close(strategy.loss.detach(), expected.detach(), rtol=1e-5, atol=0)

    keep = EWCPlugin(1.0, mode="online", decay_factor=d, keep_importance_data=True)
    for t, f in enumerate(fs):
        keep.update_importances(f, t)
    assert sorted(keep.importances) == [0, 1, 2]


@pytest.mark.parametrize("norm", [False, True], ids=["linear-only", "layer-norm"])
def test_ewc_fisher_estimates_match_a_plain_loop(norm: bool):
    # linear-only models take the fused nn.Linear pass, the layer norm sends it to vmap
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7) if norm else nn.Identity(),
                          nn.ReLU(), nn.Linear(7, 3))
    x, y = torch.randn(70, 5), torch.randint(0, 3, (70,))  # 8 full minibatches + 6 samples
    crit = nn.CrossEntropyLoss()
    data = TensorCLDataset(x, y, 0)
    for fisher, size in [("minibatch", 8), ("empirical", 1)]:
        got = EWCPlugin(1.0, fisher=fisher).compute_importances(model, crit, None, data, "cpu", 8)
        want = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        starts = range(0, 70, size)
        for i in starts:
            grads = torch.autograd.grad(crit(model(x[i:i + size]), y[i:i + size]),
                                        list(model.parameters()))
            for n, g in zip(want, grads):
                want[n] += g.square() / len(starts)
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_ewc_fisher_of_a_multi_head_model_covers_only_the_heads_used():
    bench = SplitDigits(5, return_task_id=True, seed=0)
    model = MultiHeadMLP(input_size=64, hidden_size=16, hidden_layers=1)
    for e in bench.train_stream[:2]:
        model.classifier.adaptation(e)
    crit = nn.CrossEntropyLoss()
    fisher = EWCPlugin(1.0).compute_importances(model, crit, None, bench.train_stream[1].dataset,
                                                "cpu", 32)
    assert float(fisher["classifier.classifiers.0.weight"].abs().sum()) == 0.0
    assert float(fisher["classifier.classifiers.1.weight"].abs().sum()) > 0.0


def test_first_experience_has_no_penalty():
    bench = SplitDigits(5, seed=0)
    weights = []
    for plugins in ([], [EWCPlugin(1e3)], [SynapticIntelligencePlugin(1.0)], [RWalkPlugin(10.0)],
                    [LwFPlugin(5.0)]):
        model = _build_single(seed=0)
        strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=32,
                         plugins=plugins, evaluator=EvaluationPlugin())
        torch.manual_seed(0)
        strategy.train(bench.train_stream[0])
        weights.append([p.detach().clone() for p in model.parameters()])
    for w in weights[1:]:
        for a, b in zip(weights[0], w):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- the penalty's gradient and the loop ---------------------------------------------------------
class _GradSpy(StrategyPlugin):
    """Placed before a regulariser: the task loss's gradient in ``before_backward`` (the
    regulariser has not added its penalty yet) and ``.grad`` and the weights in
    ``after_backward``."""

    def before_backward(self, strategy, **kwargs):
        self.task = torch.autograd.grad(strategy.loss, list(strategy.model.parameters()),
                                        retain_graph=True)

    def after_backward(self, strategy, **kwargs):
        self.grad = [p.grad.clone() for p in strategy.model.parameters()]
        self.theta = [p.detach().clone() for p in strategy.model.parameters()]


def test_every_after_backward_sees_the_penalty_gradient_whatever_the_plugin_order():
    bench = SplitDigits(5, seed=0)
    model = _build_single(seed=0, hidden=16)
    spy, ewc = _GradSpy(), EWCPlugin(30.0)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=64,
                     plugins=[spy, ewc], evaluator=EvaluationPlugin())
    strategy.train(bench.train_stream[:2])
    names = [n for n, _ in model.named_parameters()]
    for n, task, grad, theta in zip(names, spy.task, spy.grad, spy.theta):
        want = task + 2 * 30.0 * ewc.importances[0][n] * (theta - ewc.saved_params[0][n])
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)


def test_no_private_autograd_engine_api():
    import raycl.plugins._params as params_module
    import raycl.training.strategy as strategy_module

    for module in (params_module, strategy_module):
        source = open(module.__file__).read()
        assert "_execution_engine" not in source and "queue_callback" not in source


# ---- stability warning ---------------------------------------------------------------------------
@pytest.mark.parametrize("opt, lr, warns", [
    ({"momentum": 0.9}, 0.18, False),  # 0.18 * 2 * 10 = 3.6 < 2 (1 + 0.9) = 3.8
    ({"momentum": 0.9}, 0.2, True),  # 4.0 > 3.8
    ({"momentum": 0.9, "dampening": 0.5}, 0.3, False),  # step 0.15: 3.0 < 3.8
    ({"momentum": 0.9, "nesterov": True}, 0.065, False),  # 1.3 < 3.8 / 2.8 = 1.357
    ({"momentum": 0.9, "nesterov": True}, 0.07, True),  # 1.4 > 1.357
    ({}, 0.095, False),  # plain SGD: 1.9 < 2
    ({}, 0.105, True),  # 2.1 > 2
    ({"weight_decay": 2.0}, 0.095, True),  # curvature 20 + 2: 2.09 > 2
])
def test_stability_warning_threshold_is_the_optimizers_limit(opt, lr, warns):
    w = nn.Parameter(torch.zeros(3))
    pen = QuadraticPenalty({"w": torch.tensor([1.0, 10.0, 0.5])}, {"w": torch.ones(3)}, {"w": w})
    plugin = SimpleNamespace()
    optimizer = torch.optim.SGD([w], lr=lr, **opt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_unstable(plugin, optimizer, pen, "lam", 1.0)
        warn_if_unstable(plugin, optimizer, pen, "lam", 1.0)  # once per plugin
    assert [issubclass(c.category, PenaltyStabilityWarning) for c in caught] == (
        [True] if warns else [])
    if warns:
        assert "\n" not in str(caught[0].message) and "lam=1 " in str(caught[0].message)
    with warnings.catch_warnings(record=True) as caught:  # Adam normalises its steps: no check
        warnings.simplefilter("always")
        warn_if_unstable(SimpleNamespace(), torch.optim.Adam([w], lr=10.0), pen, "lam", 1.0)
    assert not caught


def test_stability_warning_fires_once_per_strategy_and_names_the_safe_lambda():
    """SI at lambda 10 with SGD lr 0.05 momentum 0.9 diverged on every seed tried
    (``bench/bench_fidelity.py lambdas``); lambda 0.01 never did."""
    bench = PermutedDigits(3, seed=0)
    for lam, expected in ((10.0, 1), (0.01, 0)):
        model = _build_single(seed=0, hidden=32)
        strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                         train_mb_size=64, plugins=[SynapticIntelligencePlugin(lam)],
                         evaluator=EvaluationPlugin())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            strategy.train(bench.train_stream)  # two experiences with a penalty
        got = [c for c in caught if issubclass(c.category, PenaltyStabilityWarning)]
        assert len(got) == expected
        if got:
            msg = str(got[0].message)
            assert msg.startswith("SynapticIntelligencePlugin: si_lambda=10 ")
            assert "si_lambda <" in msg and "\n" not in msg


# ---- penalties on new and grown parameters -----------------------------------------------------
def test_grown_parameter_is_penalised_on_its_old_slice_only():
    grown = nn.Parameter(torch.randn(4, 3))
    new = nn.Parameter(torch.randn(2))
    weights = {"w": torch.full((2, 3), 2.0), "gone": torch.ones(5)}
    centres = {"w": torch.zeros(2, 3), "gone": torch.zeros(5)}
    pen = QuadraticPenalty(weights, centres, {"w": grown, "new": new})
    assert pen.names == ["w"]  # a name the model lacks is skipped
    loss = pen.add_to(new.sum())  # the loss itself does not reach `grown`
    torch.testing.assert_close(loss.detach(), 2.0 * (grown[:2].detach() ** 2).sum() + new.sum())
    loss.backward()
    pen.apply_gradient()
    assert torch.equal(grown.grad[2:], torch.zeros(2, 3))
    torch.testing.assert_close(grown.grad[:2], 4.0 * grown[:2].detach())
    assert torch.equal(new.grad, torch.ones(2))  # not penalised


def test_penalty_gradient_is_added_once_scaled_and_the_task_gradient_kept():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    pen = QuadraticPenalty({"w": torch.tensor([0.5, 3.0])}, {"w": torch.zeros(2)}, {"w": w},
                           keep_task_grads=True)
    loss = pen.add_to((w * torch.tensor([10.0, 20.0])).sum())
    pen.apply_gradient()  # before the backward: nothing to add yet
    assert w.grad is None
    (3.0 * loss).backward(retain_graph=True)  # a rescaled loss: the penalty's share follows
    pen.apply_gradient()
    torch.testing.assert_close(pen.task_grads[0], torch.tensor([30.0, 60.0]))
    torch.testing.assert_close(w.grad, torch.tensor([30.0 + 3.0, 60.0 - 36.0]))
    pen.apply_gradient()  # a second call adds nothing
    loss.backward()  # running the same graph again adds the loss's gradient, not the penalty's
    pen.apply_gradient()
    torch.testing.assert_close(w.grad, torch.tensor([43.0, 44.0]))


@pytest.mark.parametrize("make", [lambda: EWCPlugin(50.0), lambda: RWalkPlugin(1.0),
                                  lambda: SynapticIntelligencePlugin(0.1), lambda: LwFPlugin()],
                         ids=["ewc", "rwalk", "si", "lwf"])
@pytest.mark.parametrize("task_labels", [True, False], ids=["new-heads", "growing-head"])
def test_heads_that_appear_or_grow_are_handled(make, task_labels):
    """Task-IL: a head per task appears each experience; class-IL on a multi-head model: the
    single head widens (its parameters are replaced by larger ones) every experience."""
    bench = SplitDigits(5, return_task_id=task_labels, seed=0)
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_size=16, hidden_layers=1)
    plugin = make()
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=64,
                     plugins=[plugin], evaluator=EvaluationPlugin())
    for exp in bench.train_stream[:3]:
        strategy.train(exp)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if not isinstance(plugin, LwFPlugin):  # state for every parameter, at its latest shape
        plugin.before_training_exp(strategy)
        assert set(plugin._penalty.names) == {n for n, _ in model.named_parameters()}


# ---- RWalk --------------------------------------------------------------------------------------
def test_rwalk_scores_and_weights_on_a_hand_computed_two_step_example():
    model = nn.Linear(2, 1, bias=False)
    w = model.weight
    plugin = RWalkPlugin(ewc_lambda=1.0, ewc_alpha=0.5, delta_t=2)
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 0.5]]))
    strategy = _fake_strategy(model, exp=0)
    plugin.before_training_exp(strategy)
    for it, (g, new) in enumerate([([2.0, 1.0], [0.8, 0.45]), ([1.0, -2.0], [0.7, 0.4])]):
        strategy.clock.train_iterations = it
        w.grad = torch.tensor([g])
        plugin.after_backward(strategy)
        with torch.no_grad():
            w.copy_(torch.tensor([new]))
        plugin.after_update(strategy)
        plugin.after_training_iteration(strategy)
    plugin.after_training_exp(strategy)
    # F1 = 0.5 [4, 1] = [2, .5]; F2 = 0.5 [1, 4] + 0.5 F1 = [1.5, 2.25]
    # dL = -g1 (t1 - t0) - g2 (t2 - t1) = [0.4, 0.05] + [0.1, -0.1] = [0.5, -0.05]
    # s = dL / (0.5 F2 (t2 - t0)^2) = [0.5 / 0.0675, -0.05 / 0.01125]
    fisher = torch.tensor([[1.5, 2.25]])
    scores = torch.tensor([[0.5 / 0.0675, -0.05 / 0.01125]])
    torch.testing.assert_close(plugin.importance["weight"], fisher)
    torch.testing.assert_close(plugin.scores["weight"], scores, rtol=1e-5, atol=1e-5)
    weights = plugin.penalty_weights()["weight"]  # F / max F + relu(s) / max s
    torch.testing.assert_close(weights, torch.tensor([[1.5 / 2.25 + 1.0, 1.0]]))
    strategy = _fake_strategy(model, exp=1)
    plugin.before_training_exp(strategy)
    with torch.no_grad():
        w.copy_(torch.tensor([[0.0, 0.0]]))
    plugin.before_backward(strategy)
    expected = (weights * torch.tensor([[0.7, 0.4]]) ** 2).sum()
    torch.testing.assert_close(strategy.loss, expected)


# ---- SI -----------------------------------------------------------------------------------------
class _PathRecorder(StrategyPlugin):
    """Records -g . dtheta with g the gradient of the loss before later plugins' penalties."""

    def __init__(self) -> None:
        self.path: dict[str, torch.Tensor] = {}

    def before_training_exp(self, strategy, **kwargs):
        self.start = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
        self.path = {n: torch.zeros_like(p) for n, p in strategy.model.named_parameters()}

    def before_backward(self, strategy, **kwargs):
        names, params = zip(*strategy.model.named_parameters())
        grads = torch.autograd.grad(strategy.loss, params, retain_graph=True)
        self.grads = dict(zip(names, grads))

    def before_update(self, strategy, **kwargs):
        self.before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}

    def after_update(self, strategy, **kwargs):
        for n, p in strategy.model.named_parameters():
            self.path[n] -= self.grads[n] * (p.detach() - self.before[n])


def test_si_importance_is_the_path_integral_of_the_task_loss_gradient():
    bench = SplitDigits(5, seed=0)
    model = _build_single(seed=0, hidden=16)
    recorder, si = _PathRecorder(), SynapticIntelligencePlugin([0.01, 0.03], eps=1e-3)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=32, plugins=[recorder, si], evaluator=EvaluationPlugin())
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for exp in bench.train_stream[:3]:
        strategy.train(exp)
        for n, p in model.named_parameters():
            gain = recorder.path[n] / ((p.detach() - recorder.start[n]) ** 2 + 1e-3)
            expected[n] += gain.clamp_min(0)
            torch.testing.assert_close(si.omega[n], expected[n], rtol=1e-4, atol=1e-5)
            assert torch.equal(si.theta_star[n], p.detach())
    # the per-experience lambda list: experience t pays lambda_t * sum Omega (theta - theta*)^2
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in shifted.parameters():
            p += 0.1
    omega_sum = sum(float(o.sum()) for o in si.omega.values())
    for t, lam in [(0, 0.01), (1, 0.03), (5, 0.03)]:
        fake = _fake_strategy(shifted, exp=t)
        si.before_training_exp(fake)
        si.before_backward(fake)
        assert float(fake.loss.detach()) == pytest.approx(lam * 0.01 * omega_sum, rel=1e-4)


class _SeenPlan(StrategyPlugin):
    """Records, after each step, whether ``plugin`` read the step from the optimizer."""

    def __init__(self, plugin, used: list[bool]) -> None:
        self.plugin, self.used = plugin, used

    def after_update(self, strategy, **kwargs):
        self.used.append(self.plugin._step._plan is not None)


def _two_groups(model: nn.Module) -> list[dict]:
    first, *rest = list(model.parameters())
    return [{"params": [first], "lr": 0.05, "momentum": 0.9},
            {"params": rest, "lr": 0.02, "momentum": 0.5, "weight_decay": 1e-3, "dampening": 0.1}]


@pytest.mark.parametrize("make_opt, reads", [
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), True),
    (lambda m: torch.optim.SGD(_two_groups(m), lr=0.05), True),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.05), True),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.05, weight_decay=1e-3), False),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True), False),
    (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), False),
], ids=["sgd-momentum", "sgd-two-groups", "sgd", "sgd-decay", "nesterov", "adam"])
def test_path_integrals_read_from_sgd_equal_the_weight_copys(make_opt, reads):
    """SI and RWalk read a plain SGD step from the optimizer (-lr * momentum buffer) instead of
    copying the weights before it: the same importances, to rounding; other optimizers copy."""
    bench = SplitDigits(5, seed=0)
    for make in (lambda: SynapticIntelligencePlugin(0.01), lambda: RWalkPlugin(1.0, 0.9, 5)):
        results, used = [], []
        for read in (True, False):
            model = _build_single(seed=0, hidden=16)
            plugin = make()
            plugin.read_sgd_step = read
            seen = _SeenPlan(plugin, used)
            strategy = Naive(model, make_opt(model), train_mb_size=32,
                             plugins=[plugin, seen], evaluator=EvaluationPlugin())
            strategy.train(bench.train_stream[:2])
            results.append(plugin.state_dict())
        assert set(used) == ({True, False} if reads else {False})
        for key in ("omega", "scores", "importance"):
            for n, a in results[0].get(key, {}).items():
                b = results[1][key][n]
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_si_excludes_parameters_by_pattern_and_batch_norm():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    names = set(SynapticIntelligencePlugin(1.0, excluded_parameters=["2"])
                .tracked_parameters(model))
    assert names == {"0.weight", "0.bias"}
    names = set(SynapticIntelligencePlugin(1.0, excluded_parameters=["*bias"])
                .tracked_parameters(model))
    assert names == {"0.weight", "2.weight"}


# ---- LwF ----------------------------------------------------------------------------------------
def test_lwf_distillation_is_zero_for_an_identical_student_and_ignores_unseen_units():
    plugin = LwFPlugin(alpha=1.0, temperature=2.0)
    out = torch.randn(8, 6)
    units = torch.tensor([0, 2, 3])
    assert float(plugin.distillation(out, out.clone(), units)) == pytest.approx(0.0, abs=1e-7)
    changed = out.clone()
    changed[:, [1, 4, 5]] += 10.0  # units of classes never seen
    assert float(plugin.distillation(changed, out, units)) == pytest.approx(0.0, abs=1e-6)
    changed[:, 2] += 1.0
    assert float(plugin.distillation(changed, out, units)) > 1e-3


def test_lwf_teacher_is_frozen_in_eval_mode_and_distils_past_classes():
    bench = SplitDigits(5, seed=0, fixed_class_order=list(range(10)))
    model = _build_single(seed=0, dropout=0.3)
    plugin = LwFPlugin(alpha=[0.0, 1.0, 2.5])
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=32,
                     plugins=[plugin], evaluator=EvaluationPlugin())
    strategy.train(bench.train_stream[0])
    teacher = plugin.teacher
    assert teacher is not None and teacher is not model and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert plugin.seen_classes == {0: [0, 1]}
    before = copy.deepcopy(teacher.state_dict())
    strategy.train(bench.train_stream[1])
    assert plugin.teacher is not teacher  # a new teacher; the old one never moved
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert plugin.seen_classes == {0: [0, 1, 2, 3]}
    # a student equal to its teacher pays nothing; a different one pays alpha_t * KL
    x = bench.train_stream[2].dataset.x[:16]
    strategy.mb_x, strategy.clock.train_exp_counter = x, 2
    plugin.before_training_exp(strategy)
    model.eval()
    strategy.mb_output, strategy.loss = model(x), torch.zeros(())
    plugin.before_backward(strategy)
    assert float(strategy.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    # the alpha list: experience t pays alpha[t] (its last entry beyond it) times the KL
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    out = model(x)
    kl = float(plugin.distillation(out, teacher_out := plugin.teacher(x), 4).detach())
    assert kl > 1e-4 and teacher_out.shape == out.shape
    for t, alpha in [(0, 0.0), (1, 1.0), (2, 2.5), (7, 2.5)]:
        strategy.clock.train_exp_counter, strategy.mb_output = t, out
        strategy.loss = torch.zeros(())
        plugin.before_backward(strategy)
        assert float(strategy.loss.detach()) == pytest.approx(alpha * kl, rel=1e-5)


def test_lwf_multi_head_distils_every_past_head_on_its_own_units():
    """The fast path (features captured from the training forward, past heads applied to them)
    equals running the student and the teacher once per past task."""
    bench = SplitDigits(5, return_task_id=True, seed=0)
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_size=16, hidden_layers=1)
    plugin = LwFPlugin(alpha=1.0, temperature=2.0)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=32,
                     plugins=[plugin], evaluator=EvaluationPlugin())
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
    assert plugin.seen_classes == {0: [0, 1], 1: [0, 1]}
    with torch.no_grad():  # make the student differ from its teacher
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = bench.train_stream[2].dataset
    strategy.experience, strategy.mb_x, strategy.mb_task_id = (bench.train_stream[2],
                                                               data.x[:20], data.task_labels[:20])
    strategy.clock.train_exp_counter = 2
    strategy.model_adaptation(bench.train_stream[2])
    plugin.before_training_exp(strategy)
    plugin.before_forward(strategy)
    strategy.mb_output = strategy.forward()
    plugin.after_forward(strategy)
    strategy.loss = torch.zeros(())
    plugin.before_backward(strategy)
    want = sum(plugin.distillation(model(data.x[:20], t), plugin.teacher(data.x[:20], t), 2)
               for t in (0, 1))
    torch.testing.assert_close(strategy.loss, want)


# ---- hyperparameter validation ------------------------------------------------------------------
@pytest.mark.parametrize("make, name", [
    (lambda: EWCPlugin(-1.0), "ewc_lambda"),
    (lambda: EWCPlugin(1.0, mode="offline"), "mode"),
    (lambda: EWCPlugin(1.0, mode="online"), "decay_factor"),
    (lambda: EWCPlugin(1.0, mode="online", decay_factor=1.5), "decay_factor"),
    (lambda: EWCPlugin(1.0, decay_factor=0.5), "decay_factor"),
    (lambda: EWCPlugin(1.0, fisher="exact"), "fisher"),
    (lambda: RWalkPlugin(ewc_lambda=-0.1), "ewc_lambda"),
    (lambda: RWalkPlugin(ewc_alpha=1.1), "ewc_alpha"),
    (lambda: RWalkPlugin(ewc_alpha=-0.1), "ewc_alpha"),
    (lambda: RWalkPlugin(delta_t=0), "delta_t"),
    (lambda: SynapticIntelligencePlugin(-1.0), "si_lambda"),
    (lambda: SynapticIntelligencePlugin([1.0, -2.0]), "si_lambda"),
    (lambda: SynapticIntelligencePlugin([]), "si_lambda"),
    (lambda: SynapticIntelligencePlugin(1.0, excluded_parameters="fc"), "excluded_parameters"),
    (lambda: SynapticIntelligencePlugin(1.0, device="nowhere"), "device"),
    (lambda: LwFPlugin(alpha=-1.0), "alpha"),
    (lambda: LwFPlugin(alpha=[1.0, -1.0]), "alpha"),
    (lambda: LwFPlugin(temperature=0.0), "temperature"),
])
def test_bad_hyperparameters_name_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ---- checkpoints --------------------------------------------------------------------------------
def _build_single(seed: int, hidden: int = 32, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return SimpleMLP(num_classes=10, input_size=64, hidden_size=hidden, drop_rate=dropout)


PLUGINS = {  # strengths inside the stable range of this net at lr 0.05 (no stability warning)
    "ewc": lambda: EWCPlugin(50.0),
    "ewc-online": lambda: EWCPlugin(50.0, mode="online", decay_factor=0.9),
    "ewc-empirical": lambda: EWCPlugin(5.0, fisher="empirical"),
    "rwalk": lambda: RWalkPlugin(5.0, delta_t=3),
    "si": lambda: SynapticIntelligencePlugin([0.1, 0.3]),
    "lwf": lambda: LwFPlugin(alpha=[1.0, 2.0]),
}


def _run(make_plugin, bench, multi_head: bool, stop_after: int | None = None):
    def build(init_seed: int) -> Naive:
        torch.manual_seed(init_seed)
        model = (MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1, drop_rate=0.2)
                 if multi_head else SimpleMLP(10, 64, 32, drop_rate=0.2))
        ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                              loss_metrics(epoch=True, stream=True))
        return Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=32, train_epochs=2, eval_mb_size=128,
                     plugins=[make_plugin()], evaluator=ev)

    torch.manual_seed(0)
    strategy = build(0)
    for i, exp in enumerate(bench.train_stream[:3]):
        strategy.train(exp)
        metrics = strategy.eval(bench.test_stream[:3])
        if stop_after == i:
            buf = io.BytesIO()
            torch.save(strategy.state_dict(), buf)
            buf.seek(0)
            del strategy
            torch.manual_seed(1234)
            strategy = build(99)  # other initial weights: everything must come from the file
            strategy.load_state_dict(torch.load(buf, weights_only=True))
    return metrics, strategy.evaluator.get_all_metrics(), strategy.model.state_dict()


@pytest.mark.parametrize("name", list(PLUGINS))
@pytest.mark.parametrize("multi_head", [False, True], ids=["class-il", "task-il"])
def test_resumed_run_equals_uninterrupted_run(name, multi_head):
    bench = SplitDigits(5, return_task_id=multi_head, seed=0)
    full = _run(PLUGINS[name], bench, multi_head)
    resumed = _run(PLUGINS[name], bench, multi_head, stop_after=1)
    assert full[0] == resumed[0]
    assert full[1] == resumed[1]
    assert full[2].keys() == resumed[2].keys()
    for k in full[2]:
        assert torch.equal(full[2][k], resumed[2][k]), k


# ---- behaviour ----------------------------------------------------------------------------------
def _accuracy(model: nn.Module, exp, multi_head: bool) -> float:
    data = exp.dataset
    model.eval()
    with torch.no_grad():
        out = model(data.x, data.task_labels) if multi_head else model(data.x)
    model.train()
    return float((out.argmax(1) == data.targets).float().mean())


@functools.cache
def _permuted(name: str | None, seed: int) -> float:
    """PermutedDigits, 3 experiences (domain-IL); SimpleMLP 64-128-10, no dropout; SGD lr 0.05
    momentum 0.9; batch 32; 3 epochs. Returns the accuracy on experience 0's test set at the end.
    """
    bench = PermutedDigits(3, seed=seed)
    model = _build_single(seed, hidden=128)
    plugins = [BEHAVIOUR[name]()] if name else []
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=32, train_epochs=3, plugins=plugins,
                     evaluator=EvaluationPlugin())
    for exp in bench.train_stream:
        strategy.train(exp)
    return _accuracy(model, bench.test_stream[0], multi_head=False)


@functools.cache
def _task_il(name: str | None, seed: int) -> float:
    """SplitDigits task-IL, 5 tasks of 2 classes; MultiHeadMLP 64-32-32 + a head per task; SGD
    lr 0.05 momentum 0.9; batch 32; 10 epochs. Returns the final mean accuracy over the tasks.
    """
    bench = SplitDigits(5, return_task_id=True, seed=seed)
    torch.manual_seed(seed)
    model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=2)
    plugins = [BEHAVIOUR[name]()] if name else []
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=32, train_epochs=10, plugins=plugins,
                     evaluator=EvaluationPlugin())
    for exp in bench.train_stream:
        strategy.train(exp)
    accs = [_accuracy(model, exp, multi_head=True) for exp in bench.test_stream]
    return sum(accs) / len(accs)


#: The settings of the behaviour tests. SI 0.3 is inside the stable range of ``_permuted`` (no
#: PenaltyStabilityWarning on seeds 0-14) but not of ``_task_il``'s smaller net (seeds 10 and 14
#: diverge), which is why the task-IL test leaves it (and EWC, whose task-IL lead is small) out.
BEHAVIOUR = {
    "ewc": lambda: EWCPlugin(1e3),
    "ewc-online": lambda: EWCPlugin(1e3, mode="online", decay_factor=0.9),
    "si": lambda: SynapticIntelligencePlugin(0.3),
    "rwalk": lambda: RWalkPlugin(10.0),
    "lwf": lambda: LwFPlugin(alpha=1.0, temperature=2.0),
}
SEEDS = range(5)  # every behaviour test: the mean paired margin over these seeds


def _mean_margin(run, name: str) -> float:
    """Mean over ``SEEDS`` of (method - naive) on the same seed."""
    return statistics.mean(run(name, s) - run(None, s) for s in SEEDS)


@pytest.mark.parametrize("name", ["ewc", "ewc-online", "si", "rwalk"])
def test_permuted_digits_keeps_the_first_experience(name):
    """Settings: see ``_permuted`` and ``BEHAVIOUR``. Naive keeps 0.12-0.48 of experience 0 after
    two more permutations; each method keeps more on every seed. Checked on seeds 0-14: single
    margins +0.25 (RWalk) to +0.79, means of 5 consecutive seeds +0.43 to +0.63 (SI lowest), so
    the mean over any 5 seeds clears +0.30 by 0.13 or more."""
    assert _mean_margin(_permuted, name) > 0.30


@pytest.mark.parametrize("name", ["rwalk", "lwf"])
def test_task_il_ends_above_naive(name):
    """Settings: see ``_task_il`` and ``BEHAVIOUR``. Naive ends at 0.77-0.95 mean accuracy (the
    shared trunk drifts; where it drifts little there is little to gain). Checked on seeds 0-14:
    single margins -0.03 to +0.23, means of 5 consecutive seeds +0.11 to +0.15 for both methods,
    so their mean over any 5 seeds clears +0.05."""
    assert _mean_margin(_task_il, name) > 0.05
