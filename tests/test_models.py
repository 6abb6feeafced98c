"""Models: dynamic multi-head classifiers, task routing, checkpoints, backbones."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from raycl.benchmarks import Experience, SplitDigits, TensorCLDataset
from raycl.models import (
    DynamicModule,
    MTResNet18Reduced,
    MultiHeadClassifier,
    MultiHeadMLP,
    MultiTaskModule,
    ResNet18Reduced,
    SimpleCNN,
    SimpleMLP,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny ops on a shared 2-core machine run ~100x faster than with two
    threads competing with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def experience(task: int, classes: list[int]) -> Experience:
    y = torch.tensor(classes)
    data = TensorCLDataset(torch.zeros(len(classes), 4), y, task)
    return Experience(data, task, classes, task, "train")


def adapt(model: nn.Module, exp: Experience) -> None:
    """What the strategy does: every DynamicModule in the model adapts itself."""
    for module in model.modules():
        if isinstance(module, DynamicModule):
            module.adaptation(exp)


# --------------------------------------------------------------------------------------------
# MultiHeadClassifier
# --------------------------------------------------------------------------------------------

def test_heads_appear_per_task_with_the_experience_width():
    clf = MultiHeadClassifier(4, initial_out_features=2)
    assert clf.tasks == [] and list(clf.parameters()) == []
    adapt(clf, experience(0, [0, 1]))
    adapt(clf, experience(1, [2, 3, 4]))  # original ids: width max + 1
    adapt(clf, experience(2, [0]))  # at least initial_out_features
    assert clf.tasks == [0, 1, 2]
    assert [clf.classifiers[str(t)].out_features for t in (0, 1, 2)] == [2, 5, 2]
    before = [p.clone() for p in clf.parameters()]
    adapt(clf, experience(1, [2, 3]))  # adaptation is idempotent and never shrinks
    assert all(torch.equal(a, b) for a, b in zip(before, clf.parameters()))


def test_head_grows_and_keeps_trained_rows():
    clf = MultiHeadClassifier(4)
    adapt(clf, experience(0, [0, 1]))
    old = clf.classifiers["0"]
    x = torch.randn(3, 4)
    old_logits = clf(x, 0).detach()
    adapt(clf, experience(0, [2, 3]))
    new = clf.classifiers["0"]
    assert new is not old and new.out_features == 4
    assert torch.allclose(clf(x, 0)[:, :2], old_logits)


def test_heads_are_kept_in_ascending_task_order():
    clf = MultiHeadClassifier(4)
    for task in (3, 1, 2):
        adapt(clf, experience(task, [0, 1]))
    assert list(clf.classifiers.keys()) == ["1", "2", "3"]
    names = [name for name, _ in clf.named_parameters()]
    assert names == [f"classifiers.{t}.{p}" for t in (1, 2, 3) for p in ("weight", "bias")]


def test_forward_on_a_task_without_head_returns_zero_logits():
    clf = MultiHeadClassifier(4, initial_out_features=3)
    out = clf(torch.randn(5, 4), torch.full((5,), 7))
    assert torch.equal(out, torch.zeros(5, 3))


def test_mixed_task_batches_route_each_sample_to_its_head():
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_size=16, hidden_layers=2)
    adapt(model, experience(0, [0, 1]))
    adapt(model, experience(1, [0, 1, 2, 3]))
    adapt(model, experience(2, [0, 1, 2]))
    model.eval()
    x = torch.randn(9, 64)
    tasks = torch.tensor([2, 0, 1, 1, 0, 2, 5, 0, 1])  # task 5 has no head yet
    out = model(x, tasks)
    assert out.shape == (9, 4)
    for t in (0, 1, 2, 5):
        rows = tasks == t
        single = model(x[rows], t)
        width = single.shape[1]
        assert torch.allclose(out[rows, :width], single, atol=1e-6)
        # padded columns never win the argmax nor take probability mass
        assert torch.all(out[rows, width:] == model.pad_value)
        assert torch.allclose(out[rows].softmax(1)[:, :width].sum(1), torch.ones(int(rows.sum())))
    # the same outputs whether the task is given as an int, a 0-d or a per-sample tensor
    rows = tasks == 1
    assert torch.allclose(model(x[rows], torch.tensor(1)), model(x[rows], tasks[rows]))


def test_routing_equals_per_task_forward_for_a_custom_multitask_module():
    class Scale(MultiTaskModule):
        def forward_single_task(self, x, task_label):
            return x * (task_label + 1)

    x = torch.randn(6, 3)
    tasks = torch.tensor([0, 1, 2, 0, 1, 2])
    out = Scale()(x, tasks)
    assert torch.allclose(out, x * (tasks + 1).unsqueeze(1).float())


def test_gradients_reach_only_the_heads_of_tasks_present():
    model = MultiHeadMLP(input_size=8, hidden_size=8, hidden_layers=1)
    for t in range(3):
        adapt(model, experience(t, [0, 1]))
    out = model(torch.randn(4, 8), torch.tensor([0, 2, 0, 2]))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 1, 0])).backward()
    assert model.classifier.classifiers["1"].weight.grad is None
    assert model.classifier.classifiers["0"].weight.grad.abs().sum() > 0
    assert model.classifier.classifiers["2"].weight.grad.abs().sum() > 0


def test_state_dict_restores_heads_into_a_fresh_model():
    torch.manual_seed(0)
    model = MultiHeadMLP(input_size=64, hidden_size=16)
    adapt(model, experience(0, [0, 1]))
    adapt(model, experience(2, [0, 1, 2, 3, 4]))
    adapt(model, experience(1, [0, 1, 2]))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = MultiHeadMLP(input_size=64, hidden_size=16)
    fresh.load_state_dict(state)  # strict: every key finds its parameter
    assert fresh.classifier.tasks == [0, 1, 2]
    assert [n for n, _ in fresh.named_parameters()] == [n for n, _ in model.named_parameters()]
    x, tasks = torch.randn(6, 64), torch.tensor([0, 1, 2, 2, 1, 0])
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x, tasks), model(x, tasks))

    # a model already adapted to a narrower head is resized to the checkpoint's width
    partial = MultiHeadMLP(input_size=64, hidden_size=16)
    adapt(partial, experience(2, [0, 1]))
    partial.load_state_dict(state)
    assert partial.classifier.classifiers["2"].out_features == 5
    assert torch.equal(partial.eval()(x, tasks), model(x, tasks))


def test_loading_a_head_of_the_wrong_input_size_fails():
    clf = MultiHeadClassifier(4)
    adapt(clf, experience(0, [0, 1]))
    other = MultiHeadClassifier(5)
    with pytest.raises(RuntimeError, match="in_features"):
        other.load_state_dict(clf.state_dict())


def test_new_heads_follow_the_module_dtype():
    clf = MultiHeadClassifier(4).double()
    adapt(clf, experience(0, [0, 1]))
    assert clf.classifiers["0"].weight.dtype == torch.float64
    assert "_anchor" not in clf.state_dict()


def test_multihead_classifier_validates_arguments():
    with pytest.raises(ValueError, match="in_features"):
        MultiHeadClassifier(0)
    with pytest.raises(ValueError, match="initial_out_features"):
        MultiHeadClassifier(4, initial_out_features=0)


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------

def test_simple_mlp_shapes_and_named_layers():
    model = SimpleMLP(num_classes=5, input_size=64, hidden_size=32, hidden_layers=2)
    assert model(torch.randn(3, 8, 8)).shape == (3, 5)  # flattens images
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 32
    assert model.features(torch.randn(3, 64)).shape == (3, model.feature_size)
    linear = SimpleMLP(num_classes=3, input_size=10, hidden_layers=0)
    assert linear.classifier.in_features == 10 and linear(torch.randn(2, 10)).shape == (2, 3)
    assert not any(isinstance(m, nn.Dropout) for m in SimpleMLP(drop_rate=0).modules())


@pytest.mark.parametrize("make, match, error", [
    (lambda: SimpleMLP(num_classes=0), "num_classes", ValueError),
    (lambda: SimpleMLP(input_size=-1), "input_size", ValueError),
    (lambda: SimpleMLP(hidden_layers=-1), "hidden_layers", ValueError),
    (lambda: SimpleMLP(drop_rate=1.0), "drop_rate", ValueError),
    (lambda: MultiHeadMLP(hidden_layers=0), "hidden_layers", ValueError),
    (lambda: MultiHeadMLP(hidden_size=2.5), "hidden_size", TypeError),  # a float, not an int
    (lambda: SimpleCNN(in_channels=0), "in_channels", ValueError),
    (lambda: SimpleCNN(drop_rate=-0.1), "drop_rate", ValueError),
    (lambda: ResNet18Reduced(nf=0), "nf", ValueError),
    (lambda: MTResNet18Reduced(initial_out_features=0), "initial_out_features", ValueError),
])
def test_constructors_reject_bad_arguments(make, match, error):
    with pytest.raises(error, match=match):
        make()


def test_simple_cnn_on_mnist_and_cifar_shapes():
    mnist = SimpleCNN(num_classes=10, in_channels=1)
    assert mnist(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert mnist(torch.randn(2, 784)).shape == (2, 10)  # flattened MNIST rows
    cifar = SimpleCNN(num_classes=100, in_channels=3)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert isinstance(cifar.classifier, nn.Linear)
    with pytest.raises(ValueError, match="expected"):
        mnist(torch.randn(2, 783))


def test_reduced_resnet18_shapes_and_size():
    model = ResNet18Reduced(num_classes=10)
    # the GEM paper's reduced ResNet-18 (nf=20) has about 1.1M parameters
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    small = ResNet18Reduced(num_classes=7, nf=4)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert small(torch.randn(2, 3072)).shape == (2, 7)
    assert small.classifier.in_features == small.feature_size == 32


def test_multihead_resnet_routes_heads_and_restores():
    torch.manual_seed(0)
    model = MTResNet18Reduced(nf=4)
    adapt(model, experience(0, [0, 1]))
    adapt(model, experience(1, [0, 1, 2]))
    model.eval()
    x, tasks = torch.randn(4, 3, 32, 32), torch.tensor([1, 0, 1, 0])
    out = model(x, tasks)
    assert out.shape == (4, 3)
    assert torch.allclose(out[tasks == 0, :2], model(x[tasks == 0], 0), atol=1e-5)
    fresh = MTResNet18Reduced(nf=4)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x, tasks), out)


def test_multihead_mlp_learns_task_incremental_digits():
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=5, return_task_id=True, seed=0)
    model = MultiHeadMLP(input_size=64, hidden_size=64, hidden_layers=1)
    for exp in bench.train_stream[:2]:
        adapt(model, exp)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = [e.dataset for e in bench.train_stream[:2]]
    data = TensorCLDataset.concat(train)  # a mixed-task stream, as with replay
    for _ in range(60):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(data.x, data.task_labels), data.targets)
        loss.backward()
        optimizer.step()
    model.eval()
    for exp in bench.test_stream[:2]:
        ds = exp.dataset
        accuracy = (model(ds.x, ds.task_labels).argmax(1) == ds.targets).float().mean()
        assert accuracy > 0.9
