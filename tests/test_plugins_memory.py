"""Memory plugins: Replay and its storage policies, GDumb, GEM, A-GEM.

Mechanics on tiny hand-built data (every sample carries its id as a feature), the projection
guarantees checked on every training step, resume equivalence per plugin, and behaviour on the
embedded digits.
"""

from __future__ import annotations

import functools
import io
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from raycl.benchmarks import (
    PermutedDigits,
    SplitDigits,
    SubsetCLDataset,
    TensorCLDataset,
    nc_benchmark,
)
from raycl.evaluation import EvaluationPlugin, accuracy_metrics, loss_metrics
from raycl.models import MultiHeadMLP, SimpleMLP
from raycl.plugins import (
    AGEMPlugin,
    ClassBalancedStoragePolicy,
    ExperienceBalancedStoragePolicy,
    GDumbPlugin,
    GEMPlugin,
    ReplayPlugin,
    StrategyPlugin,
)
from raycl.plugins.gem import loss_gradients
from raycl.plugins.storage_policy import balanced_sizes
from raycl.training import Naive

STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


# ---- helpers -----------------------------------------------------------------------------------
def _id_benchmark(n_exp: int = 3, n_per_class: int = 10, n_classes: int = 6, task: bool = False):
    """x = (sample id, class + noise): memory samples are recognisable by their id."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.stack([torch.arange(len(y)).float(), y.float() + 0.1 * torch.randn(len(y),
                                                                                 generator=g)], 1)
    ds = torch.utils.data.TensorDataset(x, y)
    return nc_benchmark(ds, ds, n_exp, task_labels=task, fixed_class_order=list(range(n_classes)),
                        class_ids_from_zero_in_each_exp=task)


def _digits3(task: bool = False) -> tuple[list, list]:
    """The first three experiences (train, test) of the 5-experience digits split."""
    bench = SplitDigits(n_experiences=5, return_task_id=task, seed=0,
                        fixed_class_order=list(range(10)))
    return bench.train_stream[:3], bench.test_stream[:3]


def _fake_strategy(dataset, counter: int = 0):
    return SimpleNamespace(experience=SimpleNamespace(dataset=dataset), device=torch.device("cpu"),
                           clock=SimpleNamespace(train_exp_counter=counter))


def _dataset(n: int, classes: list[int], start: int = 0, task: int = 0) -> TensorCLDataset:
    y = torch.tensor(classes).repeat(n // len(classes) + 1)[:n]
    x = torch.arange(start, start + n).float()[:, None]
    return TensorCLDataset(x, y, task)


def _naive(model, plugins, mb=16, epochs=1, lr=0.05, evaluator=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return Naive(model, opt, train_mb_size=mb, train_epochs=epochs, eval_mb_size=512,
                 plugins=plugins, evaluator=evaluator or EvaluationPlugin())


def _behaviour(bench, plugins, seed, epochs=4, lr=0.05) -> float:
    """Stream accuracy after training a 64-64-10 MLP on every experience."""
    torch.manual_seed(seed)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0.0)
    strategy = _naive(model, plugins, mb=32, epochs=epochs, lr=lr,
                      evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    strategy.train(bench.train_stream)
    return strategy.eval(bench.test_stream)[STREAM_ACC]


class _Hook(StrategyPlugin):
    """Calls ``fn(strategy)`` on one callback."""

    def __init__(self, hook: str, fn) -> None:
        setattr(self, hook, fn)  # instance attribute: dispatch looks the method up by name
        self._hook = hook

    def active_hooks(self) -> frozenset[str]:
        return frozenset({self._hook})


def _grads(strategy) -> dict[int, torch.Tensor | None]:
    return {id(p): None if p.grad is None else p.grad.clone()
            for p in strategy.model.parameters()}


# ---- storage policies --------------------------------------------------------------------------
def _assert_balanced(sizes: list[int], caps: list[int]) -> None:
    """Groups below their cap differ by at most one and are not smaller than saturated ones."""
    free = [s for s, c in zip(sizes, caps, strict=True) if s < c]
    if free:
        assert max(free) - min(free) <= 1
        assert all(s <= max(free) + 1 for s in sizes)


def test_balanced_sizes_property():
    rng = random.Random(0)
    for _ in range(500):
        caps = [rng.randrange(0, 30) for _ in range(rng.randrange(1, 8))]
        budget = rng.randrange(1, 120)
        sizes = balanced_sizes(caps, budget)
        assert sum(sizes) == min(budget, sum(caps))
        assert all(0 <= s <= c for s, c in zip(sizes, caps, strict=True))
        _assert_balanced(sizes, caps)


@pytest.mark.parametrize("mem_size", [1, 7, 10, 50, 203])
@pytest.mark.parametrize("exp_sizes", [[40, 40, 40, 40, 40], [100, 3, 60, 1, 25]])
def test_experience_balanced_policy_fills_and_balances(mem_size, exp_sizes):
    policy = ExperienceBalancedStoragePolicy({}, mem_size)
    seen_ids: dict[int, set[int]] = {}
    start = 0
    for e, n in enumerate(exp_sizes):
        data = _dataset(n, [e], start)
        seen_ids[e] = set(range(start, start + n))
        start += n
        policy(_fake_strategy(data, e))
        mem = policy.ext_mem
        sizes = [len(mem[k]) for k in sorted(mem)]
        assert sum(sizes) == min(mem_size, start)  # never over, full once enough data was seen
        _assert_balanced(sizes, [min(exp_sizes[k], mem_size) for k in sorted(mem)])
        for k, d in mem.items():  # each group holds distinct samples of its own experience
            ids = d.x[:, 0].long().tolist()
            assert len(set(ids)) == len(ids) and set(ids) <= seen_ids[k]


def test_experience_balanced_policy_fixed_quota():
    policy = ExperienceBalancedStoragePolicy({}, 10, adaptive_size=False, num_experiences=3)
    for e in range(3):
        policy(_fake_strategy(_dataset(20, [e], 100 * e), e))
    assert [len(policy.ext_mem[e]) for e in range(3)] == [4, 3, 3]
    with pytest.raises(ValueError, match="num_experiences"):
        policy(_fake_strategy(_dataset(20, [3], 300), 3))
    with pytest.raises(ValueError, match="num_experiences"):
        ExperienceBalancedStoragePolicy({}, 10, adaptive_size=False)


@pytest.mark.parametrize("mem_size", [3, 10, 31, 100])
@pytest.mark.parametrize("domain", [False, True], ids=["class-il", "domain-il"])
def test_class_balanced_policy_fills_and_balances(mem_size, domain):
    policy = ClassBalancedStoragePolicy({}, mem_size)
    seen: dict[int, int] = {}
    for e in range(4):
        classes = [0, 1, 2] if domain else [2 * e, 2 * e + 1]
        n = 5 + 20 * e  # unequal amounts per class
        data = _dataset(n, classes, 1000 * e)
        for c in classes:
            seen[c] = seen.get(c, 0) + int((data.targets == c).sum())
        policy(_fake_strategy(data, e))
        mem = policy.ext_mem
        assert set(mem) == set(seen)
        for c, d in mem.items():
            assert bool((d.targets == c).all())
        sizes = [len(mem[c]) for c in sorted(mem)]
        assert sum(sizes) == min(mem_size, sum(seen.values()))
        _assert_balanced(sizes, [seen[c] for c in sorted(mem)])


def test_class_balanced_policy_keeps_task_il_classes_apart_and_takes_any_dataset():
    policy = ClassBalancedStoragePolicy({}, 8)
    policy(_fake_strategy(_dataset(10, [0, 1], 0, task=0), 0))
    base = _dataset(10, [0, 1], 100, task=1)  # same class ids, next task, not tensors
    lazy = SubsetCLDataset([(base.x[i], int(base.targets[i])) for i in range(10)],
                           torch.arange(10), base.targets, base.task_labels)
    policy(_fake_strategy(lazy, 1))
    assert set(policy.ext_mem) == {0, 1, (1, 0), (1, 1)}
    assert [len(d) for d in policy.ext_mem.values()] == [2, 2, 2, 2]
    assert bool((policy.ext_mem[(1, 1)].task_labels == 1).all())
    assert bool((policy.ext_mem[(1, 1)].x[:, 0] >= 100).all())


def test_class_balanced_policy_fixed_quota():
    policy = ClassBalancedStoragePolicy({}, 10, adaptive_size=False, total_num_classes=4)
    policy(_fake_strategy(_dataset(40, [0, 1]), 0))
    assert [len(d) for d in policy.ext_mem.values()] == [3, 3]  # quotas 3, 3, 2, 2
    policy(_fake_strategy(_dataset(40, [2, 3], 100), 1))
    assert [len(d) for d in policy.ext_mem.values()] == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="total_num_classes"):
        policy(_fake_strategy(_dataset(40, [4], 200), 2))
    assert len(policy.ext_mem) == 4  # memory untouched by the rejected call


# ---- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, name", [
    (lambda: ReplayPlugin(mem_size=0), "mem_size"),
    (lambda: GDumbPlugin(mem_size=0), "mem_size"),
    (lambda: ExperienceBalancedStoragePolicy({}, 0), "mem_size"),
    (lambda: ClassBalancedStoragePolicy({}, -3), "mem_size"),
    (lambda: ClassBalancedStoragePolicy({}, 5, adaptive_size=False), "total_num_classes"),
    (lambda: ReplayPlugin(10, ClassBalancedStoragePolicy({}, 20)), "mem_size"),
    (lambda: GEMPlugin(0, 0.5), "patterns_per_experience"),
    (lambda: GEMPlugin(10, -0.1), "memory_strength"),
    (lambda: GEMPlugin(10, float("nan")), "memory_strength"),
    (lambda: AGEMPlugin(0, 10), "patterns_per_experience"),
    (lambda: AGEMPlugin(10, 0), "sample_size"),
])
def test_bad_values_name_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ---- replay ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", [False, True], ids=["class-il", "task-il"])
def test_replay_joins_equal_memory_minibatches_and_cycles_memory(task):
    bench = _id_benchmark(n_exp=3, n_per_class=10, n_classes=6, task=task)
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=2, hidden_size=8, hidden_layers=1) if task else nn.Linear(2, 6)
    replay = ReplayPlugin(mem_size=14)
    seen = []

    def record(strategy):
        n = strategy.mb_x.shape[0] // 2
        ids = strategy.mb_x[n:, 0].long()
        seen.append((strategy.clock.train_exp_counter, strategy.mb_x.shape[0], ids,
                     strategy.mb_task_id[n:].clone(), strategy.mb_y[n:].clone()))

    strategy = _naive(model, [replay, _Hook("before_forward", record)], mb=6, epochs=2)
    for exp in bench.train_stream:
        mem_ids = set(torch.cat([d.x[:, 0] for d in replay.ext_mem.values()]).long().tolist()
                      ) if replay.ext_mem else set()
        seen.clear()
        strategy.train(exp)
        n_cur = len(exp.dataset)
        assert len(seen) == 2 * -(-n_cur // 6)  # epoch length set by the current data
        if not mem_ids:
            assert all(size <= 6 for _, size, *_ in seen)
            continue
        assert all(size % 2 == 0 for _, size, *_ in seen)  # as many memory as current samples
        ids = torch.cat([s[2] for s in seen])
        assert set(ids.tolist()) <= mem_ids
        counts = torch.bincount(ids)[sorted(mem_ids)]
        assert int(counts.max() - counts.min()) <= 1  # cycled through, not drawn at random
        # labels and task labels travel with the memory samples
        all_x = torch.cat([e.dataset.x for e in bench.train_stream])
        all_t = torch.cat([e.dataset.task_labels for e in bench.train_stream])
        all_y = torch.cat([e.dataset.targets for e in bench.train_stream])
        pos = {int(i): k for k, i in enumerate(all_x[:, 0].long())}
        rows = torch.tensor([pos[int(i)] for i in ids])
        assert torch.equal(torch.cat([s[3] for s in seen]), all_t[rows])
        assert torch.equal(torch.cat([s[4] for s in seen]), all_y[rows])
    assert sum(len(d) for d in replay.ext_mem.values()) == 14


def test_replay_balanced_batches_split_every_memory_minibatch_over_the_groups():
    bench = _id_benchmark(n_exp=4, n_per_class=10, n_classes=8)  # 20 samples per experience
    torch.manual_seed(0)
    replay = ReplayPlugin(mem_size=30, memory_batches="balanced")
    seen = []

    def record(strategy):
        n = strategy.mb_y.shape[0] // 2
        seen.append(strategy.mb_x[-n:, 0].long())

    strategy = _naive(nn.Linear(2, 8), [replay, _Hook("before_forward", record)], mb=7, epochs=3)
    strategy.train(bench.train_stream[:3])
    groups = {k: set(d.x[:, 0].long().tolist()) for k, d in replay.ext_mem.items()}
    seen.clear()
    strategy.train(bench.train_stream[3])
    assert len(groups) == 3 and [len(g) for g in groups.values()] == [10, 10, 10]
    for ids in seen:  # 7 = 2 + 2 + 2 + one more from a randomly chosen group; 6 = 2 + 2 + 2
        per_group = sorted(sum(int(i) in g for i in ids) for g in groups.values())
        assert per_group == sorted(len(ids) // 3 + (j < len(ids) % 3) for j in range(3))
    counts = torch.bincount(torch.cat(seen))[sorted(set().union(*groups.values()))]
    assert int(counts.max() - counts.min()) <= 2  # each group cycled through, not drawn at random
    with pytest.raises(ValueError, match="memory_batches"):
        ReplayPlugin(10, memory_batches="uniform")


def test_replay_loader_batches_restart_each_epoch_with_a_short_last_minibatch():
    """``memory_batches='loader'`` draws as the reference's memory loader: train_mb_size samples
    per step, one shuffled pass at a time whose last minibatch is short, and a new pass at
    every epoch even when the last one is unfinished."""
    bench = _id_benchmark(n_exp=4, n_per_class=10, n_classes=8)  # 20 samples per experience
    torch.manual_seed(0)
    replay = ReplayPlugin(mem_size=9, memory_batches="loader")
    epochs: list[list[list[int]]] = []
    current: set[int] = set()

    def record(strategy):
        epochs[-1].append([i for i in strategy.mb_x[:, 0].long().tolist() if i not in current])

    plugins = [replay, _Hook("before_training_epoch", lambda s: epochs.append([])),
               _Hook("before_forward", record)]
    strategy = _naive(nn.Linear(2, 8), plugins, mb=4, epochs=3)
    strategy.train(bench.train_stream[:3])
    stored = sorted(i for d in replay.ext_mem.values() for i in d.x[:, 0].long().tolist())
    current = set(bench.train_stream[3].dataset.x[:, 0].long().tolist())
    epochs.clear()
    strategy.train(bench.train_stream[3])
    assert len(stored) == 9 and len(epochs) == 3
    for batches in epochs:  # 5 steps of 4 current samples each
        assert [len(b) for b in batches] == [4, 4, 1, 4, 4]  # 'cycled' would give 4s only
        assert sorted(batches[0] + batches[1] + batches[2]) == stored  # one pass, short end
        assert len(set(batches[3] + batches[4])) == 8  # the next pass, cut by the epoch's end
    assert len({tuple(b[0]) for b in epochs}) == 3  # each epoch a new shuffled pass


@functools.cache
def _task_il_replay(seed: int, replay: bool) -> float:
    """Task-IL SplitDigits, 5 tasks; MultiHeadMLP 64-32-32, SGD lr 0.1 momentum 0.9, batch 32,
    3 epochs; ``ReplayPlugin(100)`` or nothing. The mean accuracy over the tasks at the end."""
    bench = SplitDigits(n_experiences=5, return_task_id=True, seed=seed)
    torch.manual_seed(seed)
    model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=2)
    ev = EvaluationPlugin(accuracy_metrics(experience=True))
    strategy = _naive(model, [ReplayPlugin(100)] if replay else [], mb=32, epochs=3, lr=0.1,
                      evaluator=ev)
    strategy.train(bench.train_stream)
    accs = [v for k, v in strategy.eval(bench.test_stream).items()
            if k.startswith("Top1_Acc_Exp")]
    return sum(accs) / len(accs)


def test_replay_task_il_beats_naive():
    """Same model, data and seeds with and without replay. Checked on seeds 0-14: naive
    0.76-0.93, replay 0.94-0.98; single margins +0.04 to +0.21, means of 5 consecutive seeds
    +0.08 to +0.15, so the mean over any 5 seeds clears +0.04."""
    margins = [_task_il_replay(s, True) - _task_il_replay(s, False) for s in range(5)]
    assert sum(margins) / len(margins) > 0.04


def test_replay_class_il_beats_naive_far():
    # over seeds 0-7: 0.78-0.89, naive 0.10-0.20
    bench = SplitDigits(n_experiences=5, seed=0)
    replay = _behaviour(bench, [ReplayPlugin(200)], seed=0)
    naive = _behaviour(bench, [], seed=0)
    assert naive < 0.25 and replay > naive + 0.5


def test_replay_domain_il_beats_naive():
    # over seeds 0-2: 0.80-0.83, naive 0.37-0.48
    bench = PermutedDigits(n_experiences=5, seed=0)
    replay = _behaviour(bench, [ReplayPlugin(200)], seed=0, epochs=2)
    naive = _behaviour(bench, [], seed=0, epochs=2)
    assert replay > naive + 0.2


# ---- GDumb -------------------------------------------------------------------------------------
def test_gdumb_resets_to_initial_weights_and_trains_on_balanced_memory():
    train, _ = _digits3(task=True)
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_size=16, hidden_layers=1)
    gdumb = GDumbPlugin(mem_size=50)
    at_start: list[dict[str, torch.Tensor]] = []
    data_sizes: list[int] = []

    def record(strategy):
        at_start.append({k: v.clone() for k, v in strategy.model.state_dict().items()})
        data_sizes.append(len(strategy.adapted_dataset))
        assert not strategy.optimizer.state  # training starts from scratch

    strategy = _naive(model, [gdumb, _Hook("before_training_exp", record)], mb=10, epochs=2)
    strategy.train(train)
    assert data_sizes == [50, 50, 50]  # the memory, full
    groups = [len(d) for d in gdumb.ext_mem.values()]
    assert len(groups) == 6 and max(groups) - min(groups) <= 1
    assert {0, 1, (1, 0), (1, 1), (2, 0), (2, 1)} == set(gdumb.ext_mem)
    first, second, third = at_start
    for k, v in first.items():  # trunk and head 0 back to the weights of the first experience
        assert torch.equal(v, second[k]) and torch.equal(v, third[k]), k
    head1 = [k for k in second if k not in first]
    assert head1  # a new head appeared for task 1 ...
    for k in head1:  # ... and was reset to its initial (untrained) value for task 2
        assert torch.equal(second[k], third[k]), k
    trained = dict(strategy.model.state_dict())
    assert not all(torch.equal(trained[k], third[k]) for k in third)


def test_gdumb_resets_grown_tensors_where_they_overlap():
    model = nn.Linear(3, 2)
    strategy = SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    gdumb = GDumbPlugin(10)
    gdumb.reset_model(strategy)  # first experience: the snapshot
    initial = model.weight.detach().clone()
    with torch.no_grad():  # trained, then grown by one output unit (as a dynamic head would)
        grown = torch.randn(3, 3)
        model.weight = nn.Parameter(grown.clone())
        model.bias = nn.Parameter(torch.zeros(3))
    gdumb.reset_model(strategy)
    assert torch.equal(model.weight[:2], initial)  # old units back to their initial values
    assert torch.equal(model.weight[2], grown[2])  # the new unit keeps its fresh value
    with torch.no_grad():
        model.weight.mul_(2)
    gdumb.reset_model(strategy)  # the grown tensor is the new snapshot
    assert torch.equal(model.weight[2], grown[2])


def test_gdumb_class_il_beats_naive_far():
    # GDumb trains from scratch on 200 samples: give it the epochs to converge (over seeds 0-7:
    # 0.86-0.89, naive 0.19-0.20)
    bench = SplitDigits(n_experiences=5, seed=0)
    gd = _behaviour(bench, [GDumbPlugin(200)], seed=0, epochs=10)
    naive = _behaviour(bench, [], seed=0, epochs=10)
    assert naive < 0.25 and gd > naive + 0.5


# ---- GEM ---------------------------------------------------------------------------------------
def test_gem_single_constraint_is_the_exact_projection():
    torch.manual_seed(0)
    gem = GEMPlugin(5, memory_strength=0.0)
    G = torch.randn(1, 50)
    g = -0.5 * G[0] + torch.randn(50)
    gem.G = G
    out = gem.solve_quadprog(g)
    expected = g - (g @ G[0]) / (G[0] @ G[0]) * G[0]  # one constraint, margin 0: A-GEM's
    assert torch.allclose(out, expected, atol=1e-5)
    assert float(G[0].double() @ out.double()) >= -1e-6


def test_gem_memory_strength_is_the_dual_lower_bound_exactly():
    # orthogonal rows: the dual separates, v_i = max(strength, -G_i g / |G_i|^2), out = g + G^T v
    G = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    g = torch.tensor([-0.2, -3.0, 5.0, 0.4])  # violates rows 0 (mildly) and 1 (strongly)
    for strength in (0.0, 0.5):
        gem = GEMPlugin(5, memory_strength=strength)
        gem.G = G
        v = torch.clamp(-(G @ g) / (G * G).sum(1), min=strength)
        torch.testing.assert_close(gem.solve_quadprog(g), g + v @ G, atol=1e-5, rtol=0)
    # strength 0.5: v = [0.5 (not 0.2), 1.5, 0.5 (row 2 was satisfied, still lifted)]
    torch.testing.assert_close(gem.solve_quadprog(g), torch.tensor([0.3, 0.0, 5.0, 0.9]),
                               atol=1e-5, rtol=0)


def test_gem_projection_satisfies_every_past_constraint():
    torch.manual_seed(0)
    for T in range(1, 7):
        G = torch.nn.functional.normalize(torch.randn(T, 300) + torch.randn(300), dim=1)
        g = -G.sum(0) + 0.3 * torch.randn(300)
        for strength in (0.0, 0.5):
            gem = GEMPlugin(5, strength)
            gem.G = G
            out = gem.solve_quadprog(g)
            assert float((G.double() @ out.double()).min()) >= -1e-6


def test_gem_projection_copes_with_gradients_of_very_different_sizes():
    # a diverging run: one past experience's gradient is 1e6 times another's
    torch.manual_seed(0)
    G = torch.randn(4, 500) * torch.tensor([[1e-2], [1e4], [1.0], [30.0]])
    g = -G[2] - 1e-3 * G[1] + torch.randn(500)
    for strength in (0.0, 0.5):
        gem = GEMPlugin(5, strength)
        gem.G = G
        out = gem.solve_quadprog(g).double()
        dots = G.double() @ out / (G.double().norm(dim=1) * out.norm())
        assert float(dots.min()) >= -1e-7  # relative to the sizes involved


@pytest.mark.parametrize("T", [1, 2, 3, 6])
def test_gem_projection_meets_the_dual_qps_optimality_conditions(T: int):
    """G g' >= 0 is not enough: the projection must be the QP's solution. Its KKT conditions,
    checked on the result: g' - g = G^T v with v >= memory_strength, G g' >= 0, and
    (G g')_i = 0 wherever v_i > memory_strength (blocks split into several column chunks)."""
    torch.manual_seed(T)
    blocks = [torch.randn(T, n) for n in (30, 5, 17)]
    grads = [-0.5 * b.sum(0) + 0.1 * torch.randn(b.shape[1]) for b in blocks]
    gem = GEMPlugin(5, 0.5)
    gem._chunk = 8
    got = gem._project(blocks, grads)
    G, g, g1 = (torch.cat(list(v), -1).double() for v in (blocks, grads, got))
    v = torch.linalg.lstsq(G.T, (g1 - g).unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(G.T @ v, g1 - g, rtol=0, atol=1e-5)
    slack = G @ g1
    assert float(v.min()) >= 0.5 - 1e-5 and float(slack.min()) >= -1e-5
    assert float(((v - 0.5) * slack).abs().max()) <= 1e-4


def test_gem_projection_in_place_matches_the_copy_and_reaches_non_contiguous_grads():
    """``after_backward`` writes G^T v + g over ``.grad`` in column chunks: the same numbers as
    the out-of-place projection, including for a ``.grad`` that is not contiguous."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.zeros(s)) for s in [(5, 7), (7,), (3, 11)]]
    blocks = [torch.randn(3, p.numel()) for p in params]
    grads = [-0.5 * b.sum(0) + 0.1 * torch.randn(b.shape[1]) for b in blocks]
    gem = GEMPlugin(5, 0.5)
    gem._chunk = 4  # several column chunks per block, the last one partial
    expected = gem._project(blocks, grads)
    flat = [g.clone() for g in grads]
    assert gem._project(blocks, flat, out=flat) is flat
    assert all(torch.equal(a, b) for a, b in zip(flat, expected, strict=True))
    for p, g in zip(params, grads, strict=True):
        p.grad = g.view(p.shape).clone()
    params[2].grad = torch.empty(11, 3).T.copy_(params[2].grad)  # same values, not contiguous
    assert not params[2].grad.is_contiguous()
    gem._blocks, gem._params = blocks, params
    gem.after_backward(SimpleNamespace())
    assert not params[2].grad.is_contiguous()
    for p, e in zip(params, expected, strict=True):
        assert torch.equal(p.grad.reshape(-1), e)


def _check_gem_steps(experiences, model, gem, epochs=2, some_kept=True):
    before: list[dict] = []
    stats = {"projected": 0, "steps": 0}

    def pre(strategy):
        before.clear()
        before.append(_grads(strategy))

    def post(strategy):
        if gem.G is None:
            return
        params = [p for p in strategy.model.parameters() if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params]).double()
        cols = torch.cat([torch.full((p.numel(),), p.grad is not None)
                          for p in strategy.model.parameters() if p.requires_grad])
        dots = gem.G[:, cols].double() @ flat
        assert float(dots.min()) >= -1e-6, float(dots.min())
        stats["steps"] += 1
        changed = any(not torch.equal(p.grad, before[0][id(p)]) for p in params)
        stats["projected"] += changed
        for p in strategy.model.parameters():  # parameters with no gradient stay without one
            assert (p.grad is None) == (before[0][id(p)] is None)

    strategy = _naive(model, [_Hook("after_backward", pre), gem, _Hook("after_backward", post)],
                      mb=32, epochs=epochs)
    strategy.train(experiences)
    assert stats["steps"] > 0 and stats["projected"] > 0
    if some_kept:  # gradients that conflict with no past experience pass unchanged
        assert stats["projected"] < stats["steps"]
    return stats


def test_gem_vectorised_path_keeps_every_past_constraint():
    bench = SplitDigits(n_experiences=5, seed=0)
    torch.manual_seed(0)
    gem = GEMPlugin(30, 0.5)
    _check_gem_steps(bench.train_stream[:4], SimpleMLP(10, 64, 32, drop_rate=0.0), gem)
    assert gem._linear_ok is True and gem._vmap_ok is None  # the fused pass served every step
    gem = GEMPlugin(30, 0.5)
    gem._linear_ok = False  # the vmap pass, as for a model the fused pass does not cover
    _check_gem_steps(bench.train_stream[:4], SimpleMLP(10, 64, 32, drop_rate=0.0), gem)
    assert gem._vmap_ok is True


def test_gem_loop_path_for_multi_task_models_keeps_every_past_constraint():
    train, _ = _digits3(task=True)
    torch.manual_seed(0)
    gem = GEMPlugin(30, 0.0)
    model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1)
    _check_gem_steps(train, model, gem)
    assert gem._vmap_ok is False


def test_gem_vectorised_and_loop_gradients_agree_and_bad_models_fall_back():
    train, _ = _digits3()
    torch.manual_seed(0)
    gem = GEMPlugin(20, 0.5)
    strategy = _naive(SimpleMLP(10, 64, 32, drop_rate=0.0), [gem], mb=32)
    strategy.train(train[:2])
    gem.before_training_exp(strategy)
    params = [p for p in strategy.model.parameters()]
    fast = torch.cat(gem._vmap_pass(strategy), 1)
    gem._params = params
    fused = torch.cat(gem._gradients_linear(strategy), 1)  # one pass, per-experience bmm
    slow = torch.stack([torch.cat(loss_gradients(strategy, params, x[i], y[i], t[i]))
                        for _, x, y, t in gem._stacks for i in range(len(x))])
    assert fast.shape == fused.shape == (2, sum(p.numel() for p in params))
    assert torch.allclose(fast, slow, atol=1e-6) and torch.allclose(fused, slow, atol=1e-6)
    assert gem._linear_ok is True

    class WithBatchNorm(nn.Module):  # in-place running-stat updates defeat vmap
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                     nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    gem = GEMPlugin(20, 0.5)
    with pytest.warns(UserWarning, match="one backward per past experience"):
        _check_gem_steps(train, WithBatchNorm(), gem, epochs=1, some_kept=False)
    assert gem._vmap_ok is False


def test_gem_class_il_beats_naive_far():
    # over seeds 0-7: 0.88-0.91, naive 0.10-0.20
    bench = SplitDigits(n_experiences=5, seed=0)
    gem = _behaviour(bench, [GEMPlugin(40, 0.5)], seed=0)
    naive = _behaviour(bench, [], seed=0)
    assert naive < 0.25 and gem > naive + 0.5


# ---- A-GEM -------------------------------------------------------------------------------------
def test_agem_sample_is_balanced_over_experiences():
    agem = AGEMPlugin(50, sample_size=31)
    for e, n in enumerate([5, 50, 50]):
        agem.update_memory(_dataset(n, [e], 100 * e, task=e), e)
    agem.before_training_exp(_fake_strategy(None))
    for _ in range(20):
        x, y, t = agem.sample_from_memory()
        assert len(x) == 31
        counts = torch.bincount(t, minlength=3)
        assert int(counts.max() - counts.min()) <= 1
        assert torch.equal(t, y)  # each sample keeps its own label
        for e in range(3):  # distinct samples, except for cycling the 5-sample experience
            ids = x[t == e, 0].long()
            assert len(set(ids.tolist())) == min(len(ids), [5, 50, 50][e])


@pytest.mark.parametrize("task", [False, True], ids=["class-il", "task-il"])
def test_agem_projects_only_conflicting_gradients(task):
    train, _ = _digits3(task=task)
    torch.manual_seed(0)
    model = (MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1) if task
             else SimpleMLP(10, 64, 32, drop_rate=0.0))
    agem = AGEMPlugin(40, 40)
    before: list[dict] = []
    stats = {"projected": 0, "kept": 0}

    def pre(strategy):
        before[:] = [_grads(strategy)]

    def post(strategy):
        ref = agem.reference_gradients
        if ref is None:
            return
        params = [p for p in strategy.model.parameters() if p.requires_grad]
        have = torch.cat([torch.full((p.numel(),), p.grad is not None) for p in params])
        old = torch.cat([before[0][id(p)].reshape(-1) for p in params if p.grad is not None])
        new = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
        ref = ref[have].double()
        for p in params:
            assert (p.grad is None) == (before[0][id(p)] is None)
        if float(old.double() @ ref) >= 0:
            assert torch.equal(new, old)
            stats["kept"] += 1
        else:
            assert float(new.double() @ ref) >= -1e-6
            stats["projected"] += 1

    strategy = _naive(model, [_Hook("after_backward", pre), agem, _Hook("after_backward", post)],
                      mb=32, epochs=2)
    strategy.train(train)
    assert stats["projected"] > 0 and stats["kept"] > 0


def test_agem_domain_il_beats_naive():
    # over seeds 0-7 A-GEM led naive by 0.10 to 0.24 (naive 0.31-0.47)
    bench = PermutedDigits(n_experiences=5, seed=0)
    agem = _behaviour(bench, [AGEMPlugin(100, 100)], seed=0)
    naive = _behaviour(bench, [], seed=0)
    assert agem > naive + 0.05


# ---- resume ------------------------------------------------------------------------------------
def _run(make_plugin, train, test, stop_after=None, multi_head=False, seed=0):
    """Train 3 experiences with eval after each; optionally checkpoint after ``stop_after``,
    rebuild everything with other initial weights and RNG state, load, and continue."""
    def build(init_seed):
        torch.manual_seed(init_seed)
        if multi_head:
            model = MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1, drop_rate=0.2)
        else:
            model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.3)
        ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                              loss_metrics(stream=True))
        return _naive(model, [make_plugin()], mb=16, epochs=2, evaluator=ev)

    torch.manual_seed(seed)
    strategy = build(seed)
    for i, exp in enumerate(train):
        strategy.train(exp)
        metrics = strategy.eval(test)
        if stop_after == i:
            buf = io.BytesIO()
            torch.save(strategy.state_dict(), buf)
            buf.seek(0)
            del strategy
            torch.manual_seed(1234)
            strategy = build(seed + 99)
            strategy.load_state_dict(torch.load(buf, weights_only=True))
    params = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    return metrics, strategy.evaluator.get_all_metrics(), params


@pytest.mark.parametrize("make_plugin, multi_head", [
    (lambda: ReplayPlugin(60), False),
    (lambda: ReplayPlugin(60, ClassBalancedStoragePolicy({}, 60)), True),
    (lambda: ReplayPlugin(60, memory_batches="balanced"), False),
    (lambda: ReplayPlugin(60, memory_batches="loader"), False),
    (lambda: GDumbPlugin(60), False),
    (lambda: GDumbPlugin(60), True),
    (lambda: GEMPlugin(20, 0.5), False),
    (lambda: GEMPlugin(20, 0.5), True),
    (lambda: AGEMPlugin(20, 16), False),
    (lambda: AGEMPlugin(20, 16), True),
], ids=["replay", "replay-class-balanced-task-il", "replay-balanced-batches",
        "replay-loader-batches", "gdumb",
        "gdumb-task-il", "gem", "gem-task-il", "agem", "agem-task-il"])
def test_resumed_run_equals_uninterrupted_run(make_plugin, multi_head):
    train, test = _digits3(task=multi_head)
    full = _run(make_plugin, train, test, multi_head=multi_head)
    resumed = _run(make_plugin, train, test, stop_after=1, multi_head=multi_head)
    assert full[0] == resumed[0]
    assert full[1] == resumed[1]
    assert full[2].keys() == resumed[2].keys()
    for k in full[2]:
        assert torch.equal(full[2][k], resumed[2][k]), k
