"""CWR* and CoPE: hand-computed arithmetic, hooks, resume equivalence and behaviour on digits."""

from __future__ import annotations

import functools
import io
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raycl.benchmarks import SplitDigits, TensorCLDataset, data_incremental_benchmark
from raycl.evaluation import EvaluationPlugin, accuracy_metrics, loss_metrics
from raycl.models import SimpleMLP
from raycl.plugins import CoPEPlugin, CWRStarPlugin, PPPloss, StrategyPlugin
from raycl.training import Naive

STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def _fake_strategy(targets, exp_counter=0, model=None):
    ds = SimpleNamespace(targets=torch.tensor(targets))
    params = [] if model is None else model.parameters()
    return SimpleNamespace(adapted_dataset=ds, experience=SimpleNamespace(dataset=ds),
                           clock=SimpleNamespace(train_exp_counter=exp_counter),
                           optimizer=torch.optim.SGD(params, lr=0.1))


# ---- CWR* ---------------------------------------------------------------------------------------
def test_cwr_consolidation_arithmetic_on_hand_built_layer():
    model = nn.Sequential(nn.Linear(5, 2), nn.ReLU(), nn.Linear(2, 3))
    layer = model[2]
    plugin = CWRStarPlugin(model, freeze_remaining_model=False)
    # experience A: classes 0 (3 samples) and 1 (1 sample); "training" leaves these values
    plugin.before_training_exp(_fake_strategy([0, 0, 0, 1], model=model))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 6.0], [9.0, 9.0]]))
        layer.bias.copy_(torch.tensor([1.0, 3.0, 5.0]))
    plugin.after_training_exp(None)
    # mean over the current rows' entries (1 + 2 + 3 + 6) / 4 = 3; a row not trained stays
    assert torch.equal(layer.weight, torch.tensor([[-2.0, -1.0], [0.0, 3.0], [9.0, 9.0]]))
    assert torch.equal(layer.bias, torch.tensor([1.0, 3.0, 5.0]))  # the bias is not consolidated
    # experience B: class 1 again (4 samples) and new class 2 (4 samples)
    plugin.before_training_exp(_fake_strategy([1, 1, 1, 1, 2, 2, 2, 2], 1, model))
    # reset: zeros except the consolidated row of class 1, which is present again
    assert torch.equal(layer.weight, torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[7.0, 7.0], [2.0, 4.0], [6.0, 8.0]]))
    plugin.after_training_exp(None)
    # mean (2 + 4 + 6 + 8) / 4 = 5: w1 = [-3, -1], w2 = [1, 3]; class 0's row is restored
    wpast = math.sqrt(1 / 4)  # past_j / cur_j of class 1
    w1 = [(wpast * 0.0 - 3.0) / (wpast + 1), (wpast * 3.0 - 1.0) / (wpast + 1)]
    expected_w = torch.tensor([[-2.0, -1.0], w1, [1.0, 3.0]])
    assert torch.allclose(layer.weight, expected_w, atol=1e-6)
    assert plugin.past_j.tolist() == [3, 5, 4]


def test_cwr_layer_auto_detection_and_bad_names():
    nested = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 3), nn.ReLU())
    assert CWRStarPlugin(nested).get_cwr_layer() is nested[1]  # the last nn.Linear
    mlp = SimpleMLP(num_classes=10, input_size=64, hidden_size=16)
    assert CWRStarPlugin(mlp).get_cwr_layer() is mlp.classifier
    assert CWRStarPlugin(mlp, cwr_layer_name="features.1").get_cwr_layer() is mlp.features[1]
    for bad in ("head", "features"):  # missing, and not a linear layer
        with pytest.raises(ValueError, match="cwr_layer_name"):
            CWRStarPlugin(mlp, cwr_layer_name=bad)
    with pytest.raises(ValueError, match="cwr_layer_name"):
        CWRStarPlugin(nn.Sequential(nn.ReLU()))


class _Spy(StrategyPlugin):
    """Records, at the first iteration of each experience, which parameters train."""

    def __init__(self) -> None:
        self.trainable: list[dict[str, bool]] = []
        self.dropout_training: list[bool] = []

    def before_forward(self, strategy, **kwargs):
        if strategy.clock.train_exp_iterations == 0:
            self.trainable.append({n: p.requires_grad
                                   for n, p in strategy.model.named_parameters()})
            self.dropout_training.append(strategy.model.features[2].training)


def test_cwr_freezes_other_layers_from_the_second_experience():
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=5, seed=0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.5)
    spy = _Spy()
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=32, plugins=[CWRStarPlugin(model), spy],
                     evaluator=EvaluationPlugin())
    strategy.train(bench.train_stream[0])
    features = {k: v.clone() for k, v in model.features.state_dict().items()}
    strategy.train(bench.train_stream[1])
    assert all(spy.trainable[0].values()) and spy.dropout_training[0]
    assert spy.trainable[1] == {"features.1.weight": False, "features.1.bias": False,
                                "classifier.weight": True, "classifier.bias": True}
    assert not spy.dropout_training[1]  # frozen layers run in eval mode
    for k, v in model.features.state_dict().items():  # momentum did not move them either
        assert torch.equal(v, features[k]), k


@functools.cache
def _pretrained_trunk(seed: int) -> dict[str, torch.Tensor]:
    """SimpleMLP 64-128-10 trained jointly on every class of the digits (5 epochs, SGD lr 0.01
    momentum 0.9), then given a fresh output layer: good features, an untrained classifier
    (CWR*'s paper starts from an ImageNet-pretrained network the same way). Its state."""
    bench = SplitDigits(n_experiences=5, seed=seed)
    torch.manual_seed(seed)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    x = torch.cat([e.dataset.x for e in bench.train_stream])
    y = torch.cat([e.dataset.targets for e in bench.train_stream])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(5):
        for idx in torch.randperm(len(y)).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.classifier.reset_parameters()
    return model.state_dict()


def _cwr_run(seed, use_cwr):
    bench = SplitDigits(n_experiences=5, seed=seed)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=128, drop_rate=0.0)
    model.load_state_dict(_pretrained_trunk(seed))
    torch.manual_seed(seed)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     train_mb_size=32, train_epochs=2, eval_mb_size=512,
                     plugins=[CWRStarPlugin(model)] if use_cwr else [],
                     evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    strategy.train(bench.train_stream)
    return strategy.eval(bench.test_stream)[STREAM_ACC]


def test_cwr_on_good_features_keeps_every_class_where_naive_keeps_the_last():
    """CWR* is for features that are already good (it trains only the output layer after the
    first experience). On a trunk pretrained on all ten digits with a fresh head, class-IL
    fine-tuning ends with the last experience's classes (naive), CWR* with all of them. From
    scratch at the issue-17 settings (MLP 64-256-256, lr 0.05, 2 epochs) it stays near chance
    instead (``bench/bench_fidelity.py cwr``). Checked on seeds 0-9: naive 0.19-0.38, CWR*
    0.76-0.86, single margins +0.42 to +0.61, means over seeds 0-4 and 5-9 +0.53 and +0.50;
    the test asks +0.4 of the mean over seeds 0-4."""
    margins = [_cwr_run(s, True) - _cwr_run(s, False) for s in range(5)]
    assert sum(margins) / len(margins) > 0.4


# ---- resume -------------------------------------------------------------------------------------
def _resume_run(bench, build, stop_after=None):
    strategy = build(0)
    for i, exp in enumerate(bench.train_stream[:3]):
        strategy.train(exp)
        metrics = strategy.eval(bench.test_stream)
        if stop_after == i:
            buf = io.BytesIO()
            torch.save(strategy.state_dict(), buf)
            buf.seek(0)
            torch.manual_seed(1234)  # the resumed process starts from another RNG state
            strategy = build(99)  # other initial weights and fresh plugins
            strategy.load_state_dict(torch.load(buf, weights_only=True))
    return metrics, strategy.evaluator.get_all_metrics(), strategy.model.state_dict()


def _assert_resume_equal(bench, build):
    full = _resume_run(bench, build)
    resumed = _resume_run(bench, build, stop_after=1)
    assert full[0] == resumed[0] and full[1] == resumed[1]
    for k, v in full[2].items():
        assert torch.equal(v, resumed[2][k]), k


def _evaluator():
    return EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                            loss_metrics(experience=True, stream=True))


def test_cwr_resumed_run_equals_uninterrupted_run():
    def build(init_seed):
        torch.manual_seed(init_seed)
        model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.3)
        return Naive(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=16, train_epochs=2, eval_mb_size=128,
                     plugins=[CWRStarPlugin(model)], evaluator=_evaluator())

    _assert_resume_equal(SplitDigits(n_experiences=5, seed=0), build)


def _embedder(p_size=32, hidden=128):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, p_size))


def test_cope_resumed_run_equals_uninterrupted_run():
    def build(init_seed):
        torch.manual_seed(init_seed)
        model = _embedder()
        return Naive(model, torch.optim.Adam(model.parameters(), lr=1e-3), train_mb_size=16,
                     eval_mb_size=128, plugins=[CoPEPlugin(mem_size=50, p_size=32, alpha=0.9)],
                     evaluator=_evaluator())

    _assert_resume_equal(SplitDigits(n_experiences=5, seed=0), build)


# ---- PPP loss -----------------------------------------------------------------------------------
def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


def test_ppp_loss_attractor_and_repellor_on_hand_computed_two_class_example():
    T = 0.5
    xs = [_unit(0.1), _unit(0.5), _unit(1.4), _unit(2.0)]
    ys = [0, 0, 1, 1]
    protos = {0: _unit(0.3), 1: _unit(1.7)}

    def p(c, x, q):  # P(c | x; proxy q) against the other class's prototype
        e = math.exp((x[0] * q[0] + x[1] * q[1]) / T)
        o = protos[1 - c]
        return e / (e + math.exp((x[0] * o[0] + x[1] * o[1]) / T))

    attractor = repellor = 0.0
    for c in (0, 1):
        own = [i for i in range(4) if ys[i] == c]
        other = [j for j in range(4) if ys[j] != c]
        for i in own:  # one pseudo-prototype (the other same-class sample) and the prototype
            r = [k for k in own if k != i][0]
            attractor += math.log((p(c, xs[i], xs[r]) + p(c, xs[i], protos[c])) / 2)
        for r in own:
            for j in other:
                repellor += math.log(1 - (p(c, xs[j], xs[r]) + p(c, xs[j], protos[c])) / 2)

    loss = PPPloss({c: torch.tensor(v) for c, v in protos.items()}, T=T)
    x, y = torch.tensor(xs), torch.tensor(ys)
    assert loss.attractor(x, y).item() == pytest.approx(attractor, rel=1e-5)
    assert loss.repellor(x, y).item() == pytest.approx(repellor, rel=1e-5)
    assert loss(x, y).item() == pytest.approx(-(attractor + repellor) / 4, rel=1e-5)
    # the plugin's tensor-backed prototype memory gives the same loss
    plugin = CoPEPlugin(n_classes=2, p_size=2, T=T)
    plugin.p_mem.protos = torch.tensor([protos[0], protos[1]])
    plugin.p_mem.seen[:] = True
    assert plugin.ppp_loss(x, y).item() == pytest.approx(-(attractor + repellor) / 4, rel=1e-5)


def test_ppp_loss_edge_cases():
    x = F.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    protos = {c: F.normalize(torch.randn(4), dim=0) for c in range(2)}
    loss = PPPloss(protos, T=0.1)
    assert loss.repellor(x[:2], y[:2]).item() == 0.0  # one class: nothing to repel
    # class 2 has no prototype: its samples are left out, the batch size still divides
    assert loss(x, y).item() * 6 == pytest.approx(loss(x[:4], y[:4]).item() * 4, rel=1e-5)
    only = PPPloss({0: protos[0]}, T=0.1)(x[:2], y[:2])  # a single prototype: P = 1
    only.backward()
    assert only.item() == 0.0 and torch.isfinite(x.grad).all()
    assert PPPloss({}, T=0.1)(x, y).item() == 0.0
    with pytest.raises(ValueError, match="T"):
        PPPloss(protos, T=0.0)


# ---- CoPE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    ({"mem_size": 0}, "mem_size"), ({"n_classes": 0}, "n_classes"), ({"p_size": 0}, "p_size"),
    ({"alpha": -0.1}, "alpha"), ({"alpha": 1.5}, "alpha"), ({"T": 0.0}, "T"), ({"T": -1.0}, "T"),
])
def test_cope_rejects_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CoPEPlugin(**kwargs)


def test_cope_prototype_ema_update():
    plugin = CoPEPlugin(n_classes=3, p_size=2, alpha=0.75)
    before = plugin.p_mem.protos.clone()
    emb = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    s = SimpleNamespace(mb_output=emb.clone(), mb_y=torch.tensor([0, 0, 2]))
    plugin.after_forward(s)
    assert torch.allclose(s.mb_output.norm(dim=1), torch.ones(3))  # L2-normalised
    assert plugin.p_mem.seen.tolist() == [True, False, True]  # created on first appearance
    plugin.after_update(s)
    after = plugin.p_mem.protos
    mean0 = torch.tensor([0.5, 0.5])  # mean of the normalised [1, 0] and [0, 1]
    mean2 = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    for c, mean in ((0, mean0), (2, mean2)):
        v = 0.75 * before[c] + 0.25 * mean / mean.norm()
        assert torch.allclose(after[c], v / v.norm(), atol=1e-6)
    assert torch.equal(after[1], before[1])  # not in the batch: untouched


def test_cope_predicts_nearest_prototype_with_zero_for_unseen_classes():
    plugin = CoPEPlugin(n_classes=4, p_size=2)
    uniform = plugin.predict_proba(torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(uniform, torch.full((1, 4), 0.25))  # nothing seen yet
    plugin.p_mem.protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    plugin.p_mem.seen = torch.tensor([True, True, True, False])
    z = F.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.9], [-0.8, -0.2], [0.6, 0.8]]), dim=1)
    probs = plugin.predict_proba(z)
    assert probs[:, 3].eq(0).all()  # unseen class: zero probability
    assert torch.allclose(probs.sum(1), torch.ones(4))
    nearest = (z @ plugin.p_mem.protos[:3].T).argmax(1)
    assert torch.equal(probs.argmax(1), nearest)
    assert probs.argmax(1).tolist() == [0, 1, 2, 1]


def _store(plugin, x, y):
    exp = SimpleNamespace(dataset=TensorCLDataset(x, y))
    plugin.after_training_exp(SimpleNamespace(experience=exp, device=torch.device("cpu")))


def test_cope_memory_is_class_balanced_and_a_reservoir():
    torch.manual_seed(0)
    plugin = CoPEPlugin(mem_size=10, n_classes=3, p_size=2)
    _store(plugin, torch.arange(8.0)[:, None], torch.zeros(8, dtype=torch.long))
    assert plugin.mem["y"].tolist() == [0] * 8
    _store(plugin, torch.arange(8.0)[:, None], torch.ones(8, dtype=torch.long))
    assert torch.bincount(plugin.mem["y"]).tolist() == [5, 5]
    _store(plugin, torch.arange(2.0)[:, None], torch.full((2,), 2))
    assert torch.bincount(plugin.mem["y"]).tolist() == [4, 4, 2]  # room the small class leaves
    # one class streamed in 100 experiences of 10: the memory is a uniform sample of the stream
    plugin = CoPEPlugin(mem_size=50, n_classes=1, p_size=2)
    for e in range(100):
        _store(plugin, torch.arange(e * 10.0, e * 10 + 10)[:, None], torch.zeros(10).long())
    kept = plugin.mem["x"].flatten()
    assert len(kept) == 50 and len(kept.unique()) == 50
    assert 0.3 < (kept < 500).float().mean().item() < 0.7  # not only the latest samples


class _Outputs(StrategyPlugin):
    def __init__(self) -> None:
        self.eval_outputs: list[torch.Tensor] = []

    def after_eval_iteration(self, strategy, **kwargs):
        self.eval_outputs.append(strategy.mb_output)


def test_cope_eval_gives_class_probabilities_and_restores_the_criterion():
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=5, seed=0)
    model, ce, spy = _embedder(), nn.CrossEntropyLoss(), _Outputs()
    strategy = Naive(model, torch.optim.Adam(model.parameters(), lr=1e-3), ce,
                     train_mb_size=16, eval_mb_size=64, plugins=[CoPEPlugin(p_size=32), spy],
                     evaluator=EvaluationPlugin(loss_metrics(stream=True)), eval_every=0)
    before = strategy.eval(bench.test_stream)  # no prototype yet: uniform, and a zero loss
    assert torch.allclose(spy.eval_outputs[0], torch.full_like(spy.eval_outputs[0], 0.1))
    assert before["Loss_Stream/eval_phase/test_stream/Task000"] == 0.0
    strategy.train(bench.train_stream[0], eval_streams=[bench.test_stream])
    assert strategy.criterion is ce
    spy.eval_outputs.clear()
    after = strategy.eval(bench.test_stream)
    assert strategy.criterion is ce
    out = torch.cat(spy.eval_outputs)
    seen = bench.train_stream[0].classes_in_this_experience
    unseen = [c for c in range(10) if c not in seen]
    assert out.shape == (len(out), 10) and out[:, unseen].eq(0).all()
    assert torch.allclose(out.sum(1), torch.ones(len(out)))
    assert math.isfinite(after["Loss_Stream/eval_phase/test_stream/Task000"])


def _online_run(seed, use_cope):
    torch.manual_seed(seed)
    bench = data_incremental_benchmark(SplitDigits(n_experiences=5, seed=seed), 10)
    model = _embedder(32 if use_cope else 10)
    plugins = [CoPEPlugin(mem_size=300, n_classes=10, p_size=32, alpha=0.9)] if use_cope else []
    strategy = Naive(model, torch.optim.Adam(model.parameters(), lr=1e-3), train_mb_size=10,
                     eval_mb_size=512, plugins=plugins,
                     evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    strategy.train(bench.train_stream)
    return strategy.eval(bench.test_stream)[STREAM_ACC]


@pytest.mark.parametrize("seed", [0, 1])
def test_cope_far_above_naive_on_the_online_stream(seed):
    naive, cope = _online_run(seed, False), _online_run(seed, True)
    assert naive < 0.35  # naive ends on the last classes only
    assert cope > 0.7 and cope > naive + 0.45
