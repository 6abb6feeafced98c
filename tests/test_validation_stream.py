"""Validation streams: class-stratified, seeded held-out parts of the training experiences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raycl.benchmarks import (
    CLBenchmark,
    PermutedDigits,
    SplitDigits,
    SubsetCLDataset,
    TensorCLDataset,
    benchmark_with_validation_stream,
    build_benchmark,
    load_digits_tensors,
    nc_benchmark,
)
from raycl.evaluation import EvaluationPlugin, accuracy_metrics
from raycl.models import SimpleMLP
from raycl.training import Naive

MAKERS = {
    "split": lambda task: SplitDigits(5, return_task_id=task, seed=1),
    "permuted": lambda task: PermutedDigits(3, seed=1, return_task_id=task),
}


def rows(ds) -> torch.Tensor:
    """Each sample as one row ``[x..., y, task_label]`` (float64 holds the ids exactly)."""
    return torch.cat([ds.x.double(), ds.targets[:, None].double(),
                      ds.task_labels[:, None].double()], dim=1)


def multiset(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.unique(t, dim=0, return_counts=True)


@pytest.mark.parametrize("task", [False, True])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_parts_are_disjoint_complete_and_keep_the_experience(kind, task):
    bench = MAKERS[kind](task)
    before = [len(exp.dataset) for exp in bench.train_stream]
    split = benchmark_with_validation_stream(bench, 0.2, seed=0)
    assert len(split.train_stream) == len(split.valid_stream) == len(bench.train_stream)
    for orig, tr, va in zip(bench.train_stream, split.train_stream, split.valid_stream):
        assert isinstance(tr.dataset, TensorCLDataset) and isinstance(va.dataset, TensorCLDataset)
        assert len(va.dataset) > 0
        # together exactly the original samples, each as often as it was there: the two
        # parts are a partition of the experience (as multisets of (x, y, task label))
        assert len(tr.dataset) + len(va.dataset) == len(orig.dataset)
        whole_vals, whole_counts = multiset(rows(orig.dataset))
        parts_vals, parts_counts = multiset(torch.cat([rows(tr.dataset), rows(va.dataset)]))
        assert torch.equal(whole_vals, parts_vals) and torch.equal(whole_counts, parts_counts)
        for part, origin in ((tr, "train"), (va, "valid")):
            assert part.origin_stream == origin
            assert part.current_experience == orig.current_experience
            assert part.task_label == orig.task_label
            assert bool((part.dataset.task_labels == orig.task_label).all())
            assert part.classes_in_this_experience == orig.classes_in_this_experience
            assert part.benchmark is split
        # every class of the experience still trains
        assert torch.unique(tr.dataset.targets).tolist() == orig.classes_in_this_experience
    assert split.test_stream == bench.test_stream  # the same experience objects
    assert all(exp.benchmark is split for exp in split.test_stream)
    assert list(split.streams) == ["train", "valid", "test"]
    assert split.streams["valid"] is split.valid_stream
    assert split.original_classes_in_exp == bench.original_classes_in_exp
    assert (split.n_classes, split.classes_order, split.task_labels) == (
        bench.n_classes, bench.classes_order, bench.task_labels)
    # the input benchmark is left as it was
    assert [len(exp.dataset) for exp in bench.train_stream] == before
    assert bench.valid_stream == [] and list(bench.streams) == ["train", "test"]
    assert all(exp.benchmark is bench for exp in bench.train_stream)


@pytest.mark.parametrize("validation_size", [0.1, 0.25, 0.5, 37])
def test_every_class_gives_its_share(validation_size):
    bench = SplitDigits(5, seed=2)
    split = benchmark_with_validation_stream(bench, validation_size, seed=4)
    for orig, va in zip(bench.train_stream, split.valid_stream):
        n = len(orig.dataset)
        share = validation_size if isinstance(validation_size, float) else validation_size / n
        if isinstance(validation_size, int):
            assert len(va.dataset) == validation_size
        else:  # the experience's total is its quota rounded to the nearest integer
            assert abs(len(va.dataset) - share * n) <= 0.5
        n_c = torch.bincount(orig.dataset.targets, minlength=bench.n_classes)
        v_c = torch.bincount(va.dataset.targets, minlength=bench.n_classes)
        for c in orig.classes_in_this_experience:
            assert abs(int(v_c[c]) - share * int(n_c[c])) < 1, (c, int(v_c[c]), int(n_c[c]))


def hand_made(class_sizes: list[int]) -> CLBenchmark:
    """One experience holding ``class_sizes[c]`` samples of class c (x = the sample's index)."""
    y = torch.repeat_interleave(torch.arange(len(class_sizes)),
                                torch.tensor(class_sizes))
    x = torch.arange(len(y), dtype=torch.float32)[:, None]
    return nc_benchmark(TensorCLDataset(x, y), TensorCLDataset(x, y), 1, shuffle=False)


def test_rounding_rule_largest_remainder_and_one_training_sample_per_class():
    # quotas 0.5, 1, 3.5 of a total of 5: floors 0, 1, 3; the missing sample goes to the
    # largest remainder, the tie between classes 0 and 2 to class 0, which cannot give its
    # only sample, so to class 2
    split = benchmark_with_validation_stream(hand_made([1, 2, 7]), 0.5, shuffle=False)
    assert torch.bincount(split.valid_stream[0].dataset.targets, minlength=3).tolist() == [0, 1, 4]
    # a tie goes to the smaller class id: quotas 1.5 and 1.5 of a total of 3
    split = benchmark_with_validation_stream(hand_made([3, 3]), 0.5, shuffle=False)
    assert torch.bincount(split.valid_stream[0].dataset.targets).tolist() == [2, 1]
    # a float means the decimal it prints as: 0.3 of 10 is 3 (the double is just below 0.3)
    split = benchmark_with_validation_stream(hand_made([10]), 0.3, shuffle=False)
    assert len(split.valid_stream[0].dataset) == 3
    # an int is apportioned exactly: 3 of [4, 4, 4] (ties in class order)
    split = benchmark_with_validation_stream(hand_made([4, 4, 4]), 3, shuffle=False)
    assert torch.bincount(split.valid_stream[0].dataset.targets).tolist() == [1, 1, 1]
    # the most that can go: all but one of each class
    split = benchmark_with_validation_stream(hand_made([3, 2, 5]), 7, shuffle=False)
    assert torch.bincount(split.valid_stream[0].dataset.targets).tolist() == [2, 1, 4]
    assert torch.bincount(split.train_stream[0].dataset.targets).tolist() == [1, 1, 1]


def test_shuffle_false_holds_out_the_last_samples_of_each_class_in_order():
    bench = SplitDigits(5, seed=0)
    a = benchmark_with_validation_stream(bench, 0.2, shuffle=False, seed=1)
    b = benchmark_with_validation_stream(bench, 0.2, shuffle=False, seed=2)  # seed unused
    for orig, tr, va, vb in zip(bench.train_stream, a.train_stream, a.valid_stream,
                                b.valid_stream):
        assert torch.equal(va.dataset.x, vb.dataset.x)
        for c in orig.classes_in_this_experience:
            members = orig.dataset.x[orig.dataset.targets == c]
            held = va.dataset.x[va.dataset.targets == c]
            kept = tr.dataset.x[tr.dataset.targets == c]
            assert torch.equal(held, members[len(members) - len(held):])
            assert torch.equal(kept, members[:len(members) - len(held)])


def test_split_is_seeded_and_leaves_the_global_rng_alone():
    bench = PermutedDigits(3, seed=0)
    state = torch.get_rng_state()
    a = benchmark_with_validation_stream(bench, 0.1, seed=7)
    b = benchmark_with_validation_stream(bench, 0.1, seed=7)
    c = benchmark_with_validation_stream(bench, 0.1, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    for ea, eb, ec in zip(a.valid_stream, b.valid_stream, c.valid_stream):
        assert torch.equal(ea.dataset.x, eb.dataset.x)
        assert torch.equal(ea.dataset.targets, eb.dataset.targets)
        assert not torch.equal(ea.dataset.x, ec.dataset.x)
    # None draws fresh entropy
    n1 = benchmark_with_validation_stream(bench, 0.1)
    n2 = benchmark_with_validation_stream(bench, 0.1)
    assert not torch.equal(n1.valid_stream[0].dataset.x, n2.valid_stream[0].dataset.x)


def test_lazy_subset_datasets_are_split_by_their_indices():
    x_tr, y_tr, x_te, y_te = load_digits_tensors()
    base, test = TensorCLDataset(x_tr, y_tr), TensorCLDataset(x_te, y_te)
    bench = nc_benchmark(base, test, 2, seed=0, train_transform=lambda x: x * 2)
    assert isinstance(bench.train_stream[0].dataset, SubsetCLDataset)
    split = benchmark_with_validation_stream(bench, 0.1, seed=0)
    for orig, tr, va in zip(bench.train_stream, split.train_stream, split.valid_stream):
        assert isinstance(tr.dataset, SubsetCLDataset) and isinstance(va.dataset, SubsetCLDataset)
        held, kept = set(va.dataset.indices.tolist()), set(tr.dataset.indices.tolist())
        assert not held & kept
        assert held | kept == set(orig.dataset.indices.tolist())
        assert len(held) + len(kept) == len(orig.dataset)
        x, y, _ = va.dataset[0]  # the transform still runs
        first = int(va.dataset.indices[0])
        assert torch.equal(x, x_tr[first] * 2) and int(y) == int(y_tr[first])


def manual_accuracy(model: nn.Module, ds: TensorCLDataset) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(ds.x).argmax(1) == ds.targets).float().mean())


def test_naive_evaluates_the_valid_stream_under_its_own_name():
    torch.manual_seed(0)
    bench = benchmark_with_validation_stream(SplitDigits(5, seed=0), 0.2, seed=0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32, drop_rate=0.0)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True))
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                     train_mb_size=32, eval_mb_size=256, evaluator=evaluator)
    n = len(bench.train_stream)
    for exp in bench.train_stream[:2]:
        strategy.train(exp)
        metrics = strategy.eval(bench.valid_stream)
    assert "Top1_Acc_Stream/eval_phase/valid_stream/Task000" in metrics
    assert "Top1_Acc_Exp/eval_phase/valid_stream/Task000/Exp001" in metrics
    assert not any("test_stream" in name for name in metrics)
    matrix = evaluator.accuracy_matrix("valid_stream")
    assert len(matrix) == 2 and all(len(row) == n for row in matrix)
    assert not any(math.isnan(v) for row in matrix for v in row)
    for j, exp in enumerate(bench.valid_stream):  # the last row is the current model's
        assert matrix[1][j] == pytest.approx(manual_accuracy(model, exp.dataset), abs=1e-6)
        assert metrics[f"Top1_Acc_Exp/eval_phase/valid_stream/Task000/Exp{j:03}"] == matrix[1][j]
    assert evaluator.accuracy_matrix("test_stream") == []


def test_registry_adds_a_validation_stream_in_one_call():
    plain = build_benchmark("split_digits", 5, seed=3, task_labels=True)
    assert plain.valid_stream == [] and list(plain.streams) == ["train", "test"]
    built = build_benchmark("split_digits", 5, seed=3, task_labels=True, validation_size=0.1)
    # validation_seed defaults to seed: the same as splitting the plain benchmark with it
    expected = benchmark_with_validation_stream(plain, 0.1, seed=3)
    for a, b in zip(built.train_stream + built.valid_stream + built.test_stream,
                    expected.train_stream + expected.valid_stream + expected.test_stream):
        assert (a.origin_stream, a.task_label) == (b.origin_stream, b.task_label)
        assert torch.equal(a.dataset.x, b.dataset.x)
        assert torch.equal(a.dataset.targets, b.dataset.targets)
    other = build_benchmark("split_digits", 5, seed=3, task_labels=True, validation_size=0.1,
                            validation_seed=4)
    assert torch.equal(other.test_stream[0].dataset.x, built.test_stream[0].dataset.x)
    assert not torch.equal(other.valid_stream[0].dataset.x, built.valid_stream[0].dataset.x)


def test_registry_validation_seed_fixes_the_split_of_an_unseeded_benchmark():
    def held_out(validation_seed):
        bench = build_benchmark("permuted_digits", 2, seed=None, task_labels=False,
                                validation_size=25, validation_seed=validation_seed)
        # the permutations are fresh each build; a sample's sorted pixels are not
        return [(torch.sort(e.dataset.x, dim=1).values, e.dataset.targets)
                for e in bench.valid_stream]

    a, b, c = held_out(5), held_out(5), held_out(6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert all(len(y) == 25 for _, y in a)


def one_line(info: pytest.ExceptionInfo, *words: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message


@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-3, ValueError), (0.0, ValueError), (1.0, ValueError), (-0.1, ValueError),
    (1.5, ValueError), (float("nan"), ValueError), (True, TypeError), ("0.1", TypeError),
    (None, TypeError),
])
def test_bad_validation_sizes_are_refused_in_one_line(value, error):
    bench = SplitDigits(5, seed=0)
    with pytest.raises(error) as info:
        benchmark_with_validation_stream(bench, value)
    one_line(info, "validation_size")


def test_sizes_an_experience_cannot_give_are_refused_in_one_line():
    bench = SplitDigits(5, seed=0)
    smallest = min(len(exp.dataset) for exp in bench.train_stream)
    for too_many in (smallest, smallest - 1, 10 ** 6):  # every class must keep one sample
        with pytest.raises(ValueError) as info:
            benchmark_with_validation_stream(bench, too_many)
        one_line(info, "validation_size", "train experience")
    with pytest.raises(ValueError) as info:  # rounds to no sample at all
        benchmark_with_validation_stream(bench, 0.001)
    one_line(info, "validation_size", "no sample")
    biggest_allowed = smallest - 2  # the experiences have two classes
    benchmark_with_validation_stream(bench, biggest_allowed)


def test_other_bad_arguments_are_refused_in_one_line():
    bench = SplitDigits(5, seed=0)
    split = benchmark_with_validation_stream(bench, 0.1, seed=0)
    with pytest.raises(ValueError) as info:
        benchmark_with_validation_stream(split, 0.1)
    one_line(info, "already has a validation stream")
    with pytest.raises(TypeError) as info:
        benchmark_with_validation_stream(bench, 0.1, shuffle=1)
    one_line(info, "shuffle")
    with pytest.raises(ValueError) as info:
        benchmark_with_validation_stream(bench, 0.1, seed=-1)
    one_line(info, "seed")
    with pytest.raises(TypeError) as info:
        benchmark_with_validation_stream(bench.train_stream, 0.1)
    one_line(info, "benchmark")
    with pytest.raises(ValueError) as info:
        build_benchmark("split_digits", 5, seed=0, task_labels=False, validation_size=1.0)
    one_line(info, "validation_size")
    with pytest.raises(ValueError) as info:
        build_benchmark("split_digits", 5, seed=0, task_labels=False, validation_size=0.1,
                        validation_seed=-2)
    one_line(info, "validation_seed")
