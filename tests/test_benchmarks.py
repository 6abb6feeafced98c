"""Benchmarks: class splits, permutations, rotations, online streams, dataset files."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from raycl.benchmarks import (
    BENCHMARKS,
    PermutedDigits,
    PermutedMNIST,
    RotatedDigits,
    Rotation,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitDigits,
    SplitFashionMNIST,
    SplitMNIST,
    SubsetCLDataset,
    TensorCLDataset,
    benchmark_entry,
    build_benchmark,
    data_incremental_benchmark,
    load_cifar_tensors,
    load_digits_tensors,
    load_mnist_tensors,
    nc_benchmark,
    permuted_benchmark,
    read_cifar_meta,
    read_idx,
    rotated_benchmark,
)
from raycl.benchmarks import digits as digits_module

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny ops on a shared 2-core machine run ~100x faster than with two
    threads competing with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_data(n_classes: int = 6, per_class: int = 4, features: int = 3):
    """x whose first feature is the sample's class id, so relabelling can be checked."""
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.randn(len(y), features)
    x[:, 0] = y.float()
    return x, y


def all_targets(stream):
    return torch.cat([exp.dataset.targets for exp in stream])


# --------------------------------------------------------------------------------------------
# Digits and class-incremental splits
# --------------------------------------------------------------------------------------------

def test_load_digits_tensors_is_a_fixed_stratified_split():
    digits_module._digits_arrays.cache_clear()
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_digits_tensors()
    digits_module._digits_arrays.cache_clear()
    torch.manual_seed(2)
    np.random.seed(2)
    second = load_digits_tensors()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    x_tr, y_tr, x_te, y_te = first
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert x_tr.min() >= 0 and x_tr.max() == 1
    share = torch.bincount(y_te).float() / (torch.bincount(y_te) + torch.bincount(y_tr))
    assert torch.all((share - 0.25).abs() < 0.01)
    first[0][0, 0] = 123.0  # fresh tensors: mutating one result leaves the next intact
    assert load_digits_tensors()[0][0, 0] != 123.0


def test_split_digits_divides_classes_evenly_and_aligns_train_and_test():
    bench = SplitDigits(n_experiences=5, seed=0)
    assert bench.name == "SplitDigits" and bench.n_classes == 10 and not bench.task_labels
    assert sorted(bench.classes_order) == list(range(10))
    seen = []
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert tr.current_experience == te.current_experience == i
        assert tr.origin_stream == "train" and te.origin_stream == "test"
        assert tr.classes_in_this_experience == te.classes_in_this_experience
        assert tr.classes_in_this_experience == sorted(bench.classes_order[2 * i:2 * i + 2])
        assert set(tr.dataset.targets.tolist()) == set(tr.classes_in_this_experience)
        assert set(te.dataset.targets.tolist()) == set(tr.classes_in_this_experience)
        assert isinstance(tr.dataset, TensorCLDataset) and tr.dataset.x.shape[1] == 64
        assert tr.task_label == 0 and torch.all(tr.dataset.task_labels == 0)
        assert tr.benchmark is bench
        seen += tr.classes_in_this_experience
    assert sorted(seen) == list(range(10))
    assert sum(len(e.dataset) for e in bench.train_stream) == 1347
    assert sum(len(e.dataset) for e in bench.test_stream) == 450
    # class-IL keeps the original ids, matching the data
    _, y_tr, _, _ = load_digits_tensors()
    assert torch.equal(torch.sort(all_targets(bench.train_stream)).values, torch.sort(y_tr).values)


def test_class_order_is_seeded_and_never_touches_torch_global_rng():
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    a = SplitDigits(seed=3)
    b = SplitDigits(seed=3)
    c = SplitDigits(seed=4)
    SplitDigits(seed=None)
    PermutedDigits(seed=None)
    RotatedDigits(seed=None)
    data_incremental_benchmark(a, 7, shuffle=True, seed=None)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert a.classes_order == b.classes_order
    assert a.classes_order != c.classes_order
    # same draw as torch.randperm after reseeding (what Avalanche does globally)
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert a.classes_order == expected


def test_unseeded_order_is_random_and_shuffle_false_keeps_sorted_order():
    x, y = labelled_data(n_classes=10, per_class=1)
    orders = {tuple(nc_benchmark((x, y), (x, y), 5).classes_order) for _ in range(4)}
    assert len(orders) > 1
    assert nc_benchmark((x, y), (x, y), 5, shuffle=False).classes_order == list(range(10))


def test_fixed_class_order_is_used_and_validated():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    bench = SplitDigits(fixed_class_order=order, seed=5)
    assert bench.classes_order == order
    assert bench.train_stream[0].classes_in_this_experience == [8, 9]
    with pytest.raises(ValueError, match="fixed_class_order"):
        SplitDigits(fixed_class_order=[0, 1, 2])
    with pytest.raises(ValueError, match="fixed_class_order"):
        SplitDigits(fixed_class_order=[0] * 10)


def test_task_labels_and_per_experience_relabelling():
    x, y = labelled_data()
    bench = nc_benchmark(TensorDataset(x, y), TensorDataset(x, y), 3, task_labels=True, seed=1,
                         class_ids_from_zero_in_each_exp=True)
    assert bench.task_labels
    for e, exp in enumerate(bench.train_stream):
        ds = exp.dataset
        assert exp.task_label == e and exp.task_labels == [e]
        assert torch.all(ds.task_labels == e)
        assert exp.classes_in_this_experience == [0, 1]
        originals = bench.original_classes_in_exp[e]
        assert originals == bench.classes_order[2 * e:2 * e + 2]
        # relabelled target r is original class originals[r] (encoded in x[:, 0])
        for r in (0, 1):
            assert torch.all(ds.x[ds.targets == r, 0] == originals[r])
        assert bench.test_stream[e].task_label == e


def test_class_ids_from_zero_from_first_exp_relabels_by_class_order():
    x, y = labelled_data()
    bench = nc_benchmark((x, y), (x, y), 3, seed=2, class_ids_from_zero_from_first_exp=True)
    for e, exp in enumerate(bench.train_stream):
        assert exp.classes_in_this_experience == [2 * e, 2 * e + 1]
        for r in exp.classes_in_this_experience:
            original = bench.original_classes_in_exp[e][r - 2 * e]
            assert original == bench.classes_order[r]
            assert torch.all(exp.dataset.x[exp.dataset.targets == r, 0] == original)
    with pytest.raises(ValueError, match="class_ids_from_zero"):
        nc_benchmark((x, y), (x, y), 3, class_ids_from_zero_in_each_exp=True,
                     class_ids_from_zero_from_first_exp=True)


def test_nc_benchmark_rejects_bad_arguments():
    x, y = labelled_data()
    with pytest.raises(ValueError, match="n_experiences"):
        nc_benchmark((x, y), (x, y), 4)
    with pytest.raises(ValueError, match="n_experiences"):
        nc_benchmark((x, y), (x, y), 0)
    with pytest.raises(TypeError, match="n_experiences"):
        nc_benchmark((x, y), (x, y), 2.0)
    with pytest.raises(TypeError, match="train_dataset"):
        nc_benchmark(object(), (x, y), 2)
    with pytest.raises(TypeError, match="test_dataset"):
        nc_benchmark((x, y), (x, y.float()), 2)
    with pytest.raises(ValueError, match="seed"):
        nc_benchmark((x, y), (x, y), 2, seed=-1)
    with pytest.raises(ValueError, match="test_dataset"):
        nc_benchmark((x[y < 4], y[y < 4]), (x, y), 2)
    with pytest.raises(ValueError, match="train_dataset"):
        nc_benchmark((x, y[:-1]), (x, y), 2)


class CountingImageDataset:
    """A torchvision-style dataset: (image, label) pairs and a `targets` list; counts reads."""

    def __init__(self, n: int, n_classes: int) -> None:
        self.targets = [i % n_classes for i in range(n)]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        self.reads += 1
        return torch.arange(4.0).view(1, 2, 2) + 10 * i, self.targets[i]


def test_datasets_with_targets_are_wrapped_lazily():
    train, test = CountingImageDataset(12, 4), CountingImageDataset(8, 4)
    bench = nc_benchmark(train, test, 2, seed=0, train_transform=lambda img: img * 2)
    assert train.reads == 0 and test.reads == 0
    exp = bench.train_stream[0]
    assert isinstance(exp.dataset, SubsetCLDataset)
    x, y, t = exp.dataset[1]
    i = int(exp.dataset.indices[1])
    assert torch.equal(x, (torch.arange(4.0).view(1, 2, 2) + 10 * i) * 2)  # train transform
    assert int(y) == train.targets[i] and int(t) == 0
    x_test, _, _ = bench.test_stream[0].dataset[0]
    assert float(x_test.flatten()[0]) == 10 * float(bench.test_stream[0].dataset.indices[0])
    assert train.reads == 1


# --------------------------------------------------------------------------------------------
# Permuted and rotated
# --------------------------------------------------------------------------------------------

def test_permuted_shares_a_permutation_within_an_experience_and_differs_across():
    x, y = labelled_data(n_classes=4, per_class=5, features=16)
    x_test, y_test = x[:6].clone(), y[:6].clone()
    bench = permuted_benchmark((x, y), (x_test, y_test), 3, seed=0)
    perms = []
    for tr, te in zip(bench.train_stream, bench.test_stream):
        assert torch.equal(tr.dataset.targets, y) and torch.equal(te.dataset.targets, y_test)
        assert torch.equal(te.dataset.x, tr.dataset.x[:6])
        assert tr.classes_in_this_experience == [0, 1, 2, 3]
        # each row is a reordering of the original row; recover the permutation
        src = x[0]
        perm = [int((src == v).nonzero()[0]) for v in tr.dataset.x[0]]
        assert torch.equal(tr.dataset.x, x[:, perm])
        perms.append(perm)
    assert perms[0] != list(range(16))  # the first experience is permuted as well
    assert perms[0] != perms[1] and perms[1] != perms[2]
    again = permuted_benchmark((x, y), (x_test, y_test), 3, seed=0)
    assert torch.equal(again.train_stream[2].dataset.x, bench.train_stream[2].dataset.x)
    assert bench.n_classes == 4 and not bench.task_labels


def test_permuted_images_move_whole_pixels_and_task_labels():
    x = torch.randn(5, 3, 4, 4)
    y = torch.tensor([0, 1, 0, 1, 2])
    bench = permuted_benchmark(TensorDataset(x, y), TensorDataset(x, y), 2, seed=1,
                               task_labels=True)
    out = bench.train_stream[1].dataset.x
    assert out.shape == x.shape
    flat_in, flat_out = x.flatten(2), out.flatten(2)
    perm = [int((flat_in[0, 0] == v).nonzero()[0]) for v in flat_out[0, 0]]
    assert torch.equal(flat_out, flat_in[:, :, perm])  # one permutation for all channels
    assert [e.task_label for e in bench.train_stream] == [0, 1]
    hw = permuted_benchmark((x[:, 0], y), (x[:, 0], y), 1, seed=1).train_stream[0].dataset.x
    assert hw.shape == (5, 4, 4)


def test_permuted_and_rotated_wrap_lazy_datasets_with_a_transform():
    train, test = CountingImageDataset(6, 3), CountingImageDataset(3, 3)
    permuted = permuted_benchmark(train, test, 2, seed=0)
    exp = permuted.train_stream[1]
    assert isinstance(exp.dataset, SubsetCLDataset) and len(exp.dataset) == 6
    x, y, _ = exp.dataset[4]
    perm = exp.dataset.transform.permutation
    assert int(y) == 1 and not torch.equal(perm, torch.arange(4))
    assert torch.equal(x.flatten(), (torch.arange(4.0) + 40)[perm])
    x_test, _, _ = permuted.test_stream[1].dataset[2]
    assert torch.equal(x_test.flatten(), (torch.arange(4.0) + 20)[perm])  # same permutation
    other = permuted.train_stream[0].dataset.transform.permutation
    assert not torch.equal(other, perm)
    reads = train.reads
    rotated = rotated_benchmark(train, test, 1, rotations_list=[90])
    x, _, _ = rotated.train_stream[0].dataset[2]
    expected = torch.rot90(torch.arange(4.0).view(1, 2, 2) + 20, 1, dims=(1, 2))
    assert torch.allclose(x, expected, atol=1e-5)
    assert train.reads == reads + 2  # one peek at the sample shape, one access


def test_permuted_digits():
    bench = PermutedDigits(n_experiences=3, seed=0)
    assert bench.name == "PermutedDigits" and bench.n_experiences == 3
    x_tr, y_tr, _, _ = load_digits_tensors()
    for exp in bench.train_stream:
        assert exp.dataset.x.shape == (1347, 64)
        assert torch.equal(exp.dataset.targets, y_tr)
        assert torch.equal(exp.dataset.x.sum(1), x_tr.sum(1))  # pixels moved, not changed
    assert not torch.equal(bench.train_stream[0].dataset.x, x_tr)


def hand_made_image() -> torch.Tensor:
    img = torch.zeros(8, 8)
    img[1, 2:6] = 1.0   # a bar near the top
    img[2:7, 5] = 0.5   # a stem on the right
    img[6, 1] = 0.25    # a dot bottom-left
    return img


def test_rotation_by_90_degrees_equals_rot90_counter_clockwise():
    img = hand_made_image()
    rotated = Rotation(90, sample_ndim=2)(img)
    assert torch.allclose(rotated, torch.rot90(img, 1, dims=(0, 1)), atol=1e-5)
    # the top bar turns into a left column: counter-clockwise as displayed
    assert rotated[2:6, 1].eq(1.0).all()
    assert torch.allclose(Rotation(-90, 2)(img), torch.rot90(img, -1, dims=(0, 1)), atol=1e-5)
    assert torch.allclose(Rotation(180, 2)(img), torch.rot90(img, 2, dims=(0, 1)), atol=1e-5)
    assert torch.allclose(Rotation(0, 2)(img), img, atol=1e-6)
    # non-square images rotate by half-turns exactly as well
    rect = torch.arange(24.0).reshape(1, 4, 6)
    assert torch.allclose(Rotation(180, 3)(rect), torch.rot90(rect, 2, dims=(1, 2)), atol=1e-4)


def test_rotated_benchmark_on_flattened_and_image_data():
    img = hand_made_image()
    x = torch.stack([img, img.T]).reshape(2, 64)
    y = torch.tensor([0, 1])
    bench = rotated_benchmark((x, y), (x, y), 2, rotations_list=[90, 0])
    out = bench.train_stream[0].dataset.x
    assert out.shape == (2, 64)
    assert torch.allclose(out[0].view(8, 8), torch.rot90(img, 1, dims=(0, 1)), atol=1e-5)
    assert torch.allclose(bench.test_stream[0].dataset.x, out)
    assert torch.allclose(bench.train_stream[1].dataset.x, x, atol=1e-6)
    assert torch.equal(bench.train_stream[0].dataset.targets, y)
    images = rotated_benchmark((x.view(2, 1, 8, 8), y), (x.view(2, 1, 8, 8), y), 2,
                               rotations_list=[90, 0])
    assert torch.allclose(images.train_stream[0].dataset.x.view(2, 64), out, atol=1e-6)


def test_rotated_random_angles_are_seeded_and_fill_is_used():
    x = torch.rand(4, 64)
    y = torch.tensor([0, 1, 0, 1])
    a = rotated_benchmark((x, y), (x, y), 3, seed=7)
    b = rotated_benchmark((x, y), (x, y), 3, seed=7)
    c = rotated_benchmark((x, y), (x, y), 3, seed=8)
    for ea, eb in zip(a.train_stream, b.train_stream):
        assert torch.equal(ea.dataset.x, eb.dataset.x)
    assert not torch.equal(a.train_stream[0].dataset.x, c.train_stream[0].dataset.x)
    flat = torch.full((1, 64), -0.4)
    filled = rotated_benchmark((flat, y[:1]), (flat, y[:1]), 1, rotations_list=[30], fill=-0.4)
    assert torch.allclose(filled.train_stream[0].dataset.x, flat, atol=1e-5)
    zero_fill = rotated_benchmark((flat, y[:1]), (flat, y[:1]), 1, rotations_list=[30])
    assert zero_fill.train_stream[0].dataset.x.max() > -0.3  # uncovered corners become 0


def test_rotated_rejects_bad_arguments():
    x, y = torch.rand(2, 64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="rotations_list"):
        rotated_benchmark((x, y), (x, y), 3, rotations_list=[0, 90])
    with pytest.raises(ValueError, match="square"):
        rotated_benchmark((x[:, :60], y), (x[:, :60], y), 1)
    with pytest.raises(ValueError, match="test_dataset"):
        rotated_benchmark((x, y), (x[:, :49], y), 1)


def test_rotated_digits():
    bench = RotatedDigits(n_experiences=2, rotations_list=[0, 180])
    assert bench.name == "RotatedDigits"
    x_tr = load_digits_tensors()[0]
    assert torch.allclose(bench.train_stream[0].dataset.x, x_tr, atol=1e-6)
    flipped = torch.rot90(x_tr.view(-1, 8, 8), 2, dims=(1, 2)).reshape(-1, 64)
    assert torch.allclose(bench.train_stream[1].dataset.x, flipped, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Data-incremental
# --------------------------------------------------------------------------------------------

def test_data_incremental_cuts_experiences_into_views():
    bench = SplitDigits(n_experiences=5, return_task_id=True, seed=0)
    online = data_incremental_benchmark(bench, 32)
    sizes_by_parent = []
    i = 0
    for parent in bench.train_stream:
        n = len(parent.dataset)
        expected = [32] * (n // 32) + ([n % 32] if n % 32 else [])
        chunks = online.train_stream[i:i + len(expected)]
        sizes_by_parent.append([len(c.dataset) for c in chunks])
        assert sizes_by_parent[-1] == expected
        offset = 0
        for c in chunks:
            ds = c.dataset
            assert c.task_label == parent.task_label
            assert torch.equal(ds.x, parent.dataset.x[offset:offset + len(ds)])
            # a view of the parent's storage, not a copy
            assert ds.x.untyped_storage().data_ptr() == parent.dataset.x.untyped_storage(
            ).data_ptr()
            assert c.classes_in_this_experience == torch.unique(ds.targets).tolist()
            originals = online.original_classes_in_exp[c.current_experience]
            parent_map = dict(zip(parent.classes_in_this_experience,
                                  bench.original_classes_in_exp[parent.current_experience]))
            assert originals == [parent_map[k] for k in c.classes_in_this_experience]
            offset += len(ds)
        i += len(expected)
    assert [c.current_experience for c in online.train_stream] == list(range(i))
    assert len(online.test_stream) == 5
    for old, new in zip(bench.test_stream, online.test_stream):
        assert new.dataset is old.dataset and new.task_label == old.task_label
        assert new.benchmark is online and old.benchmark is bench
    dropped = data_incremental_benchmark(bench, 32, drop_last=True)
    assert all(len(c.dataset) == 32 for c in dropped.train_stream)
    assert len(dropped.train_stream) == sum(len(s) for s in sizes_by_parent) - sum(
        1 for s in sizes_by_parent if s[-1] != 32)


def test_data_incremental_thousands_of_tiny_experiences_are_cheap():
    bench = SplitDigits(seed=0)
    start = time.perf_counter()
    online = data_incremental_benchmark(bench, 1)
    elapsed = time.perf_counter() - start
    assert len(online.train_stream) == 1347
    assert elapsed < 2.0
    first = online.train_stream[0]
    assert first.classes_in_this_experience == [int(first.dataset.targets[0])]


def test_data_incremental_shuffle_is_seeded():
    bench = SplitDigits(seed=0)
    a = data_incremental_benchmark(bench, 10, shuffle=True, seed=1)
    b = data_incremental_benchmark(bench, 10, shuffle=True, seed=1)
    plain = data_incremental_benchmark(bench, 10)
    assert torch.equal(a.train_stream[0].dataset.x, b.train_stream[0].dataset.x)
    assert not torch.equal(a.train_stream[0].dataset.targets, plain.train_stream[0].dataset.targets)
    parent_targets = bench.train_stream[0].dataset.targets
    n_chunks = -(-len(parent_targets) // 10)
    shuffled = torch.cat([e.dataset.targets for e in a.train_stream[:n_chunks]])
    assert torch.equal(torch.sort(shuffled).values, torch.sort(parent_targets).values)


def test_data_incremental_on_lazy_datasets_and_bad_arguments():
    bench = nc_benchmark(CountingImageDataset(12, 4), CountingImageDataset(8, 4), 2, seed=0)
    online = data_incremental_benchmark(bench, 4)
    assert [len(e.dataset) for e in online.train_stream] == [4, 2, 4, 2]
    first = online.train_stream[0].dataset
    assert isinstance(first, SubsetCLDataset)
    assert torch.equal(first.indices, bench.train_stream[0].dataset.indices[:4])
    with pytest.raises(ValueError, match="experience_size"):
        data_incremental_benchmark(bench, 0)
    with pytest.raises(TypeError, match="benchmark"):
        data_incremental_benchmark([bench], 4)


# --------------------------------------------------------------------------------------------
# Dataset files: MNIST IDX, CIFAR pickles, torchvision
# --------------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 20, n_test: int = 10,
                gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_y": np.arange(n_train, dtype=np.uint8) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_y": np.arange(n_test, dtype=np.uint8) % 10}
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"], gz)
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"], gz)
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"], gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"], gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_on_real_format_files(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    x_tr, y_tr, x_te, y_te = load_mnist_tensors(tmp_path, normalize=False)
    assert x_tr.shape == (20, 784) and x_te.shape == (10, 784) and x_tr.dtype == torch.float32
    assert torch.equal(y_tr, torch.from_numpy(arrays["train_y"]).long())
    assert torch.allclose(x_tr, torch.from_numpy(arrays["train_x"]).float().view(20, 784) / 255)
    images, _, _, _ = load_mnist_tensors(tmp_path, flatten=False)
    expected = (torch.from_numpy(arrays["train_x"]).float() / 255 - 0.1307) / 0.3081
    assert images.shape == (20, 1, 28, 28)
    assert torch.allclose(images[:, 0], expected, atol=1e-5)


def test_read_idx_rejects_broken_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 5)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)


def test_split_mnist_and_fashion_mnist_from_files(tmp_path):
    write_mnist(tmp_path)
    bench = SplitMNIST(n_experiences=5, seed=0, root=tmp_path)
    assert bench.name == "SplitMNIST" and bench.n_experiences == 5
    exp = bench.train_stream[0]
    assert isinstance(exp.dataset, TensorCLDataset) and exp.dataset.x.shape == (4, 784)
    assert exp.classes_in_this_experience == bench.test_stream[0].classes_in_this_experience
    task = SplitMNIST(n_experiences=5, return_task_id=True, seed=0, root=tmp_path)
    assert task.train_stream[3].task_label == 3
    assert task.train_stream[3].classes_in_this_experience == [0, 1]  # relabelled by default
    write_mnist(tmp_path, folder="FashionMNIST", gz=True, seed=1)
    fashion = SplitFashionMNIST(n_experiences=2, seed=0, root=tmp_path, flatten=False)
    assert fashion.train_stream[0].dataset.x.shape == (10, 1, 28, 28)
    permuted = PermutedMNIST(n_experiences=2, seed=0, root=tmp_path)
    assert permuted.name == "PermutedMNIST" and permuted.train_stream[1].dataset.x.shape == (
        20, 784)


def test_missing_files_raise_one_line_file_not_found(tmp_path):
    for make in (SplitMNIST, SplitFashionMNIST, SplitCIFAR10, SplitCIFAR100):
        with pytest.raises(FileNotFoundError) as info:
            make(root=tmp_path)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path) in message and "download=True" in message


def write_cifar(root: Path, n_classes: int, per_file: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if n_classes == 10:
        folder, train, test = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in
                                                              range(1, 6)], ["test_batch"]
        label_key, meta, names_key = "labels", "batches.meta", "label_names"
    else:
        folder, train, test = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta, names_key = "fine_labels", "meta", "fine_label_names"
    folder.mkdir(parents=True)
    first = None
    for i, name in enumerate(train + test):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = [(i * per_file + j) % n_classes for j in range(per_file)]
        first = data if first is None else first
        entry = {"batch_label": name, label_key: labels, "data": data,
                 "filenames": [f"{j}.png" for j in range(per_file)]}
        if n_classes == 100:
            entry["coarse_labels"] = [c // 5 for c in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)  # the protocol of the published files
    with open(folder / meta, "wb") as f:
        pickle.dump({names_key: [f"class{c}" for c in range(n_classes)]}, f)
    return first


def test_cifar10_reader_on_real_format_files(tmp_path):
    first = write_cifar(tmp_path, 10, per_file=4)
    x_tr, y_tr, x_te, y_te = load_cifar_tensors(tmp_path, 10, normalize=False)
    assert x_tr.shape == (20, 3, 32, 32) and x_te.shape == (4, 3, 32, 32)
    assert torch.equal(y_tr, torch.arange(20) % 10)
    assert torch.allclose(x_tr[:4], torch.from_numpy(first).float().view(4, 3, 32, 32) / 255)
    norm, _, _, _ = load_cifar_tensors(tmp_path, 10)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(norm, (x_tr - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
                          atol=1e-5)
    flat, _, _, _ = load_cifar_tensors(tmp_path, 10, flatten=True)
    assert flat.shape == (20, 3072)
    assert read_cifar_meta(tmp_path, 10) == [f"class{c}" for c in range(10)]
    bench = SplitCIFAR10(n_experiences=5, seed=0, root=tmp_path)
    assert bench.name == "SplitCIFAR10"
    assert bench.train_stream[0].dataset.x.shape == (4, 3, 32, 32)


def test_cifar100_reader_uses_fine_labels(tmp_path):
    write_cifar(tmp_path, 100, per_file=100)
    x_tr, y_tr, _, y_te = load_cifar_tensors(tmp_path, 100)
    assert x_tr.shape == (100, 3, 32, 32) and sorted(y_tr.tolist()) == list(range(100))
    bench = SplitCIFAR100(n_experiences=10, seed=0, root=tmp_path)
    assert bench.n_classes == 100 and len(bench.train_stream[0].dataset) == 10
    assert len(read_cifar_meta(tmp_path, 100)) == 100
    with pytest.raises(ValueError, match="n_classes"):
        load_cifar_tensors(tmp_path, 20)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_reader_refuses_pickles_with_code(tmp_path):
    write_cifar(tmp_path, 10, per_file=2)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar_tensors(tmp_path, 10)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_torchvision_missing_gives_one_line_install_hint(tmp_path):
    with pytest.raises(ImportError) as info:
        SplitMNIST(root=tmp_path, download=True)
    message = str(info.value)
    assert "pip install raycl[vision]" in message and "\n" not in message
    write_mnist(tmp_path)  # files present: transforms still need torchvision
    with pytest.raises(ImportError, match=r"raycl\[vision\]"):
        SplitCIFAR10(root=tmp_path, train_transform=lambda img: img)
    with pytest.raises(ImportError, match=r"raycl\[vision\]"):
        PermutedMNIST(root=tmp_path / "empty", download=True)
    assert SplitMNIST(root=tmp_path, download=True).n_experiences == 5  # files on disk suffice


def test_download_goes_through_torchvision_then_reads_the_files(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:
        def __init__(self, root, train=True, download=False, transform=None):
            calls.append((root, train, download))
            if download and not (Path(root) / "MNIST" / "raw").exists():
                write_mnist(Path(root), gz=True)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=FakeMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    bench = SplitMNIST(n_experiences=2, seed=0, root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert isinstance(bench.train_stream[0].dataset, TensorCLDataset)
    assert sum(len(e.dataset) for e in bench.train_stream) == 20


def test_import_raycl_does_not_import_sklearn_or_pandas():
    code = ("import sys, raycl, raycl.benchmarks, raycl.models; "
            "assert 'sklearn' not in sys.modules and 'pandas' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('sklearn', 'pandas')))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------
# The benchmark registry
# --------------------------------------------------------------------------------------------

def write_files_for(name: str, root: Path) -> None:
    """Tiny files, in the real formats, for a benchmark that is not embedded."""
    if "fashion" in name:
        write_mnist(root, folder="FashionMNIST")
    elif "mnist" in name:
        write_mnist(root)
    elif name == "split_cifar10":
        write_cifar(root, 10, per_file=4)
    elif name == "split_cifar100":
        write_cifar(root, 100, per_file=100)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_registry_entries_declare_what_their_factories_build(name, tmp_path):
    entry = benchmark_entry(name)
    assert entry.name == name and "task" in entry.scenarios
    if entry.embedded:  # no files anywhere: builds all the same
        bench = build_benchmark(name, 2, seed=0, task_labels=True, root=tmp_path / "none")
    else:
        with pytest.raises(FileNotFoundError):
            build_benchmark(name, 2, seed=0, task_labels=True, root=tmp_path)
        write_files_for(name, tmp_path)
        bench = build_benchmark(name, 2, seed=0, task_labels=True, root=tmp_path)
    assert bench.n_classes == entry.n_classes and len(bench.train_stream) == 2
    for e, (train, test) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert tuple(train.dataset.x.shape[1:]) == entry.input_shape
        assert tuple(test.dataset.x.shape[1:]) == entry.input_shape
        assert train.task_label == e and bool((train.dataset.task_labels == e).all())
        n_seen = len(bench.original_classes_in_exp[e])
        assert n_seen == (entry.n_classes // 2 if entry.splits_classes else entry.n_classes)
    # the natural scenario has no task labels; a class split is class-incremental by nature
    assert entry.default_scenario == ("class" if entry.splits_classes else "domain")
    single = build_benchmark(name, 2, seed=0, task_labels=False, root=tmp_path)
    assert [exp.task_label for exp in single.train_stream] == [0, 0]


@pytest.mark.parametrize("name, make", [
    ("split_digits", lambda n, t, s: SplitDigits(n, return_task_id=t, seed=s)),
    ("permuted_digits", lambda n, t, s: PermutedDigits(n, seed=s, return_task_id=t)),
    ("rotated_digits", lambda n, t, s: RotatedDigits(n, seed=s, return_task_id=t)),
])
@pytest.mark.parametrize("task_labels", [False, True])
def test_registry_builds_the_same_data_as_the_benchmark_functions(name, make, task_labels):
    ours = build_benchmark(name, 5, seed=3, task_labels=task_labels)
    theirs = make(5, task_labels, 3)
    assert ours.classes_order == theirs.classes_order
    for a, b in zip(ours.train_stream + ours.test_stream, theirs.train_stream + theirs.test_stream):
        assert torch.equal(a.dataset.x, b.dataset.x)
        assert torch.equal(a.dataset.targets, b.dataset.targets)
        assert torch.equal(a.dataset.task_labels, b.dataset.task_labels)


def test_registry_files_benchmarks_build_the_same_data_as_the_benchmark_functions(tmp_path):
    write_mnist(tmp_path)
    write_cifar(tmp_path, 10, per_file=4)
    pairs = [(build_benchmark("split_mnist", 5, seed=4, task_labels=True, root=tmp_path),
              SplitMNIST(5, return_task_id=True, seed=4, root=tmp_path)),
             (build_benchmark("permuted_mnist", 2, seed=4, task_labels=False, root=tmp_path),
              PermutedMNIST(2, seed=4, root=tmp_path)),
             (build_benchmark("split_cifar10", 2, seed=4, task_labels=False, root=tmp_path),
              SplitCIFAR10(2, seed=4, root=tmp_path))]
    for ours, theirs in pairs:
        for a, b in zip(ours.train_stream, theirs.train_stream):
            assert torch.equal(a.dataset.x, b.dataset.x)
            assert torch.equal(a.dataset.targets, b.dataset.targets)


def test_registry_rejects_unknown_names_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError) as info:
        build_benchmark("split_mnsit", 5, seed=0, task_labels=False)
    message = str(info.value)
    assert "\n" not in message and "'split_mnsit'" in message
    assert all(name in message for name in BENCHMARKS)
    with pytest.raises(TypeError, match="benchmark name"):
        benchmark_entry(None)
    # checked before any file is looked for
    with pytest.raises(ValueError, match="n_experiences must divide the 100 classes"):
        build_benchmark("split_cifar100", 3, seed=0, task_labels=False, root=tmp_path)
    with pytest.raises(TypeError, match="n_experiences"):
        build_benchmark("split_digits", 2.0, seed=0, task_labels=False)
    with pytest.raises(TypeError, match="seed"):
        build_benchmark("split_digits", 2, seed="0", task_labels=False)
    with pytest.raises(TypeError, match="task_labels"):
        build_benchmark("split_digits", 2, seed=0, task_labels="task")
    assert benchmark_entry("permuted_digits").check_n_experiences(3) == 3  # any number
    with pytest.raises(TypeError):
        BENCHMARKS["mine"] = BENCHMARKS["split_digits"]  # read-only: add an entry in the table
