"""Benchmark generators: class-incremental splits, permuted and rotated domains, online streams.

Each generator takes a train and a test dataset and returns a :class:`CLBenchmark` whose train
and test streams are aligned (test experience ``i`` holds the test samples that belong with
train experience ``i``). Tensor inputs (``TensorDataset``, :class:`TensorCLDataset`, an ``(x, y)``
pair of tensors) become :class:`TensorCLDataset` experiences, the strategy's fast path; any other
dataset with a ``targets`` attribute (torchvision style, yielding ``(image, label)``) is wrapped
lazily in :class:`SubsetCLDataset`, so its images are read only when a batch needs them.

Randomness (class order, permutations, angles) comes from a generator private to each call and
seeded with ``seed``: no generator reseeds or draws from torch's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from raycl.benchmarks.base import (
    CLBenchmark,
    CLDataset,
    Experience,
    SubsetCLDataset,
    TensorCLDataset,
)
from raycl.checks import check_int, check_seed

Transform = Callable[[Any], Tensor]

__all__ = [
    "PixelPermutation",
    "Rotation",
    "data_incremental_benchmark",
    "nc_benchmark",
    "permuted_benchmark",
    "rotated_benchmark",
]


# --------------------------------------------------------------------------------------------
# Input normalisation and argument checks
# --------------------------------------------------------------------------------------------

class _Source:
    """A dataset reduced to what the generators need: targets, and tensors or a lazy base."""

    __slots__ = ("x", "targets", "base")

    def __init__(self, x: Tensor | None, targets: Tensor, base: Any = None) -> None:
        self.x = x
        self.targets = targets
        self.base = base

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def take(self, idx: Tensor, targets: Tensor, task_label: int,
             transform: Transform | None = None, x: Tensor | None = None) -> CLDataset:
        """The samples at ``idx`` with new ``targets`` and one task label, as a CLDataset.

        ``x`` replaces the source's tensor (already-transformed data of the same samples).
        """
        data = self.x if x is None else x
        labels = torch.full((idx.shape[0],), task_label, dtype=torch.long,
                            device=targets.device)
        if data is not None and transform is None:
            sel = data if idx.shape[0] == data.shape[0] and _is_identity(idx) else data[idx]
            return TensorCLDataset(sel, targets, labels)
        base = self.base if data is None else TensorCLDataset(data, self.targets)
        return SubsetCLDataset(base, idx.cpu(), targets.cpu(), labels.cpu(), transform)


def _is_identity(idx: Tensor) -> bool:
    # Lets a whole-dataset experience reuse the source tensor instead of copying it.
    return bool(torch.equal(idx, torch.arange(idx.shape[0], device=idx.device)))


def _as_targets(targets: Any, name: str) -> Tensor:
    t = targets if isinstance(targets, Tensor) else torch.as_tensor(_to_array(targets))
    if t.dim() != 1:
        raise ValueError(f"{name}: targets must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name}: targets must be integer class ids, got dtype {t.dtype}")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: targets must be non-negative class ids")
    return t


def _to_array(values: Any) -> Any:
    # torchvision keeps targets as lists (CIFAR) or tensors (MNIST); numpy arrays also occur.
    return list(values) if not hasattr(values, "__array__") else values


def _as_source(dataset: Any, name: str) -> _Source:
    """Accept a TensorCLDataset, a TensorDataset(x, y, ...), an (x, y) tensor pair, or any
    indexable dataset of ``(x, y)`` with a ``targets`` attribute."""
    if isinstance(dataset, TensorCLDataset):
        return _Source(dataset.x, dataset.targets)
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) < 2:
            raise ValueError(f"{name}: a TensorDataset needs at least two tensors (x, y)")
        x, y = dataset.tensors[0], dataset.tensors[1]
        return _Source(x, _checked_len(x, _as_targets(y, name), name))
    if (isinstance(dataset, tuple) and len(dataset) == 2
            and all(isinstance(t, Tensor) for t in dataset)):
        x, y = dataset
        return _Source(x, _checked_len(x, _as_targets(y, name), name))
    targets = getattr(dataset, "targets", None)
    if targets is None or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"{name} must be a TensorDataset, a TensorCLDataset, an (x, y) pair of tensors or "
            f"an indexable dataset with a `targets` attribute, got {type(dataset).__name__}")
    t = _as_targets(targets, name)
    if hasattr(dataset, "__len__") and len(dataset) != t.shape[0]:
        raise ValueError(f"{name}: {len(dataset)} samples but {t.shape[0]} targets")
    return _Source(None, t, dataset)


def _checked_len(x: Tensor, targets: Tensor, name: str) -> Tensor:
    if x.dim() == 0 or x.shape[0] != targets.shape[0]:
        raise ValueError(f"{name}: x has {x.shape[0] if x.dim() else 0} samples "
                         f"but targets has {targets.shape[0]}")
    return targets.to(x.device)


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator of its own: seeded, or from OS entropy when ``seed`` is None."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def _task_label(task_labels: bool, e: int) -> int:
    return e if task_labels else 0


# --------------------------------------------------------------------------------------------
# Class-incremental split
# --------------------------------------------------------------------------------------------

def nc_benchmark(train_dataset: Any, test_dataset: Any, n_experiences: int,
                 task_labels: bool = False, seed: int | None = None,
                 fixed_class_order: Sequence[int] | None = None,
                 class_ids_from_zero_in_each_exp: bool = False, *,
                 shuffle: bool = True,
                 class_ids_from_zero_from_first_exp: bool = False,
                 train_transform: Transform | None = None,
                 eval_transform: Transform | None = None) -> CLBenchmark:
    """Split a dataset's classes evenly over ``n_experiences`` (class- or task-incremental).

    Args:
        train_dataset, test_dataset: tensors (``TensorDataset(x, y)``, ``TensorCLDataset``,
            ``(x, y)``) or an indexable dataset of ``(x, y)`` with a ``targets`` attribute.
            The test set may only hold classes the train set has.
        n_experiences: number of experiences; must divide the number of classes.
        task_labels: experience ``i`` gets task label ``i`` (task-incremental); else all 0.
        seed: seeds the class-order shuffle (``torch.randperm`` on a private generator, over
            the sorted class ids). ``None`` shuffles with a fresh unseeded generator, as
            Avalanche does. Torch's global RNG is neither used nor reseeded.
        fixed_class_order: the class order to use, a permutation of the train classes;
            overrides ``seed`` and ``shuffle``.
        class_ids_from_zero_in_each_exp: relabel the classes of each experience
            ``0..k-1`` in class-order position (usual for task-IL with multi-head models).
            Without relabelling targets keep their original ids, so a class-IL model needs
            ``benchmark.n_classes`` outputs.
        shuffle: ``False`` keeps the sorted class order when no fixed order is given.
        class_ids_from_zero_from_first_exp: relabel every class by its position in the class
            order (experience 0 holds 0..k-1, experience 1 k..2k-1, ...).
        train_transform, eval_transform: per-sample transforms; when given, experiences are
            lazy :class:`SubsetCLDataset` views (transforms run at every access).

    Returns:
        A :class:`CLBenchmark`. ``classes_order`` lists original ids; each experience's
        ``classes_in_this_experience`` lists the (possibly relabelled) ids present in it;
        ``original_classes_in_exp`` the matching original ids of each train experience.
    """
    train = _as_source(train_dataset, "train_dataset")
    test = _as_source(test_dataset, "test_dataset")
    n_experiences = check_int("n_experiences", n_experiences, minimum=1)
    seed = check_seed("seed", seed)
    if class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp:
        raise ValueError("class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp"
                         " cannot both be True")
    classes = torch.unique(train.targets).tolist()  # sorted
    if not classes:
        raise ValueError("train_dataset is empty")
    unknown = sorted(set(torch.unique(test.targets).tolist()) - set(classes))
    if unknown:
        raise ValueError(f"test_dataset has classes that train_dataset lacks: {unknown}")
    n_classes = len(classes)
    if n_classes % n_experiences:
        raise ValueError(f"n_experiences={n_experiences} must divide the number of classes "
                         f"({n_classes})")
    order = _class_order(classes, seed, fixed_class_order, shuffle)
    k = n_classes // n_experiences
    exp_classes = [order[e * k:(e + 1) * k] for e in range(n_experiences)]

    # Per sorted class: its experience and its new id; samples look theirs up by searchsorted.
    pos_in_order = {c: p for p, c in enumerate(order)}
    exp_of_class = torch.tensor([pos_in_order[c] // k for c in classes])
    if class_ids_from_zero_in_each_exp:
        new_ids = [pos_in_order[c] % k for c in classes]
    elif class_ids_from_zero_from_first_exp:
        new_ids = [pos_in_order[c] for c in classes]
    else:
        new_ids = list(classes)
    new_of_class = torch.tensor(new_ids)
    sorted_classes = torch.tensor(classes)

    def split(source: _Source, origin: str, transform: Transform | None) -> list[Experience]:
        dev = source.targets.device
        slot = torch.searchsorted(sorted_classes.to(dev), source.targets)
        exp_ids = exp_of_class.to(dev)[slot]
        relabelled = new_of_class.to(dev)[slot]
        by_exp = torch.argsort(exp_ids, stable=True)  # stable: keeps the dataset's order
        counts = torch.bincount(exp_ids, minlength=n_experiences).tolist()
        stream = []
        for e, idx in enumerate(torch.split(by_exp, counts)):
            targets = relabelled[idx]
            stream.append(Experience(
                dataset=source.take(idx, targets, _task_label(task_labels, e), transform),
                current_experience=e,
                classes_in_this_experience=torch.unique(targets).tolist(),
                task_label=_task_label(task_labels, e),
                origin_stream=origin))
        return stream

    new_id_of = dict(zip(classes, new_ids))
    original_in_exp = [[c for _, c in sorted((new_id_of[c], c) for c in cls)]
                       for cls in exp_classes]
    return CLBenchmark(
        train_stream=split(train, "train", train_transform),
        test_stream=split(test, "test", eval_transform),
        n_classes=n_classes, classes_order=list(order), task_labels=bool(task_labels),
        name="nc_benchmark", original_classes_in_exp=original_in_exp)


def _class_order(classes: list[int], seed: int | None, fixed: Sequence[int] | None,
                 shuffle: bool) -> list[int]:
    if fixed is not None:
        try:
            order = [int(c) for c in fixed]
        except (TypeError, ValueError) as err:
            raise TypeError("fixed_class_order must be a sequence of int class ids") from err
        if sorted(order) != classes:
            raise ValueError(f"fixed_class_order must be a permutation of the train classes "
                             f"{classes}, got {order}")
        return order
    if not shuffle:
        return list(classes)
    perm = torch.randperm(len(classes), generator=_generator(seed)).tolist()
    return [classes[i] for i in perm]


# --------------------------------------------------------------------------------------------
# Domain-incremental: permutations and rotations
# --------------------------------------------------------------------------------------------

class PixelPermutation:
    """Reorders the pixels of images: ``(D,)`` features, ``(H, W)`` or ``(C, H, W)`` images.

    Images keep each pixel's channels together (one permutation of the ``H*W`` positions);
    works on one sample or on a batch with a leading dimension.
    """

    def __init__(self, permutation: Tensor, sample_ndim: int) -> None:
        self.permutation = permutation
        self.sample_ndim = sample_ndim
        self._spatial = 1 if sample_ndim == 1 else 2

    def __call__(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        flat = x.flatten(-self._spatial) if self._spatial == 2 else x
        return flat[..., self.permutation.to(x.device)].reshape(x.shape)


class Rotation:
    """Rotates images counter-clockwise by ``degrees`` (bilinear; uncovered corners = ``fill``).

    Accepts ``(H, W)`` / ``(C, H, W)`` images or ``(D,)`` features of a square one-channel image
    (``D = side**2``), alone or batched; the output has the input's shape, in floating point.
    Counter-clockwise as displayed with row 0 on top: 90 degrees equals
    ``torch.rot90(img, 1, dims=(-2, -1))``.
    """

    def __init__(self, degrees: float, sample_ndim: int, fill: float = 0.0) -> None:
        self.degrees = float(degrees)
        self.sample_ndim = sample_ndim
        self.fill = float(fill)

    def __call__(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.float()
        shape = x.shape
        batch = shape[:x.dim() - self.sample_ndim]
        if self.sample_ndim == 1:
            side = _square_side(shape[-1], "x")
            img = x.reshape(-1, 1, side, side)
        elif self.sample_ndim == 2:
            img = x.reshape(-1, 1, *shape[-2:])
        else:
            img = x.reshape(-1, *shape[-3:])
        out = _rotate(img, self.degrees, self.fill)
        return out.reshape(*batch, *shape[x.dim() - self.sample_ndim:])


def _square_side(d: int, name: str) -> int:
    side = math.isqrt(d)
    if side * side != d:
        raise ValueError(f"{name}: flattened samples of {d} features are not a square image; "
                         "pass image-shaped (N, H, W) or (N, C, H, W) data")
    return side


def _rotation_map(h: int, w: int, degrees: float) -> tuple[Tensor, Tensor]:
    """Bilinear rotation of an (h, w) image as a gather: source pixels and weights.

    Returns ``idx`` and ``weight`` of shape (4, h*w): output pixel p is
    ``sum_k weight[k, p] * img_flat[idx[k, p]]``, exactly what ``grid_sample`` (bilinear,
    zero padding, ``align_corners=False``) computes on the ``affine_grid`` below. Every image
    shares one angle, so the map is built once and applied to a whole dataset with four
    gathers, many times faster than ``grid_sample`` on the batch.
    """
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # Output pixel p samples the input at R p (pixel units, y pointing down); affine_grid works
    # in coordinates normalised per axis, so R is conjugated by the scale diag(w/2, h/2).
    theta = torch.tensor([[[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]]],
                         dtype=torch.float64)
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)[0].reshape(-1, 2)
    ix = ((grid[:, 0] + 1) * w - 1) / 2  # grid_sample's unnormalisation
    iy = ((grid[:, 1] + 1) * h - 1) / 2
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    idx, weight = [], []
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        cx, cy = x0 + dx, y0 + dy
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        idx.append(torch.where(inside, cy * w + cx, 0).long())
        weight.append(torch.where(inside, wgt, 0.0))
    return torch.stack(idx), torch.stack(weight)


def _rotate(img: Tensor, degrees: float, fill: float) -> Tensor:
    """Rotate a batch (N, C, H, W) counter-clockwise about the image centre."""
    h, w = img.shape[-2:]
    idx, weight = _rotation_map(h, w, degrees)
    idx, weight = idx.to(img.device), weight.to(img.device, img.dtype)
    flat = img.reshape(-1, h * w)
    if fill:
        flat = flat - fill
    out = torch.index_select(flat, 1, idx[0]).mul_(weight[0])
    for k in range(1, 4):
        out.addcmul_(torch.index_select(flat, 1, idx[k]), weight[k])
    if fill:
        out += fill
    return out.reshape(img.shape)


def _sample_shape(source: _Source, name: str) -> tuple[int, ...]:
    if source.x is not None:
        return tuple(source.x.shape[1:])
    if len(source) == 0:
        raise ValueError(f"{name} is empty")
    first = source.base[0][0]
    if not isinstance(first, Tensor):
        raise TypeError(f"{name} must yield tensors (e.g. a torchvision dataset with "
                        f"transform=ToTensor()), got {type(first).__name__}")
    return tuple(first.shape)


def _domain_benchmark(train: _Source, test: _Source, transforms: list[Any], task_labels: bool,
                      name: str) -> CLBenchmark:
    """One experience per transform, every class in each, labels unchanged."""
    classes = torch.unique(train.targets).tolist()
    unknown = sorted(set(torch.unique(test.targets).tolist()) - set(classes))
    if unknown:
        raise ValueError(f"test_dataset has classes that train_dataset lacks: {unknown}")

    def stream(source: _Source, origin: str) -> list[Experience]:
        idx = torch.arange(len(source), device=source.targets.device)
        present = torch.unique(source.targets).tolist()
        out = []
        for e, tf in enumerate(transforms):
            if source.x is not None:  # fast path: transform the whole tensor once
                ds = source.take(idx, source.targets, _task_label(task_labels, e),
                                 x=tf(source.x))
            else:
                ds = source.take(idx, source.targets, _task_label(task_labels, e), tf)
            out.append(Experience(ds, e, present, _task_label(task_labels, e), origin))
        return out

    return CLBenchmark(train_stream=stream(train, "train"), test_stream=stream(test, "test"),
                       n_classes=len(classes), classes_order=classes,
                       task_labels=bool(task_labels), name=name,
                       original_classes_in_exp=[list(classes) for _ in transforms])


def _check_same_sample_shape(train_shape: tuple[int, ...], test_shape: tuple[int, ...]) -> None:
    if train_shape != test_shape:
        raise ValueError(f"test_dataset samples have shape {test_shape}, "
                         f"train_dataset samples {train_shape}")
    if not 1 <= len(train_shape) <= 3:
        raise ValueError(f"samples must be (D,), (H, W) or (C, H, W), got {train_shape}")


def permuted_benchmark(train_dataset: Any, test_dataset: Any, n_experiences: int,
                       seed: int | None = None, task_labels: bool = False) -> CLBenchmark:
    """Domain-incremental stream: experience ``i`` sees every sample with pixel permutation i.

    The permutations are drawn in experience order from a private generator seeded with
    ``seed`` (fresh entropy if None); train and test of one experience share a permutation.
    The first experience is permuted as well (as in Avalanche's PermutedMNIST). Flattened
    ``(N, D)`` data permutes the D features; images permute the ``H*W`` positions, the same
    way in every channel. Labels are unchanged.
    """
    train = _as_source(train_dataset, "train_dataset")
    test = _as_source(test_dataset, "test_dataset")
    n_experiences = check_int("n_experiences", n_experiences, minimum=1)
    gen = _generator(check_seed("seed", seed))
    shape = _sample_shape(train, "train_dataset")
    _check_same_sample_shape(shape, _sample_shape(test, "test_dataset"))
    n_pixels = shape[0] if len(shape) == 1 else shape[-1] * shape[-2]
    perms = [PixelPermutation(torch.randperm(n_pixels, generator=gen), len(shape))
             for _ in range(n_experiences)]
    return _domain_benchmark(train, test, perms, task_labels, "permuted_benchmark")


def rotated_benchmark(train_dataset: Any, test_dataset: Any, n_experiences: int,
                      seed: int | None = None, rotations_list: Sequence[float] | None = None,
                      task_labels: bool = False, *, fill: float = 0.0) -> CLBenchmark:
    """Domain-incremental stream: experience ``i`` sees every sample rotated by one fixed angle.

    Angles (degrees, counter-clockwise) come from ``rotations_list`` (one per experience) or
    are drawn uniformly in [-180, 180) from a private generator seeded with ``seed``.
    Image-shaped data is rotated as is; flattened ``(N, D)`` data must be one-channel square
    images (side ``sqrt(D)``) and stays flattened. ``fill`` is the value of the corners the
    rotation uncovers (the background value of normalised data). Labels are unchanged.
    """
    train = _as_source(train_dataset, "train_dataset")
    test = _as_source(test_dataset, "test_dataset")
    n_experiences = check_int("n_experiences", n_experiences, minimum=1)
    gen = _generator(check_seed("seed", seed))
    shape = _sample_shape(train, "train_dataset")
    _check_same_sample_shape(shape, _sample_shape(test, "test_dataset"))
    if len(shape) == 1:
        _square_side(shape[0], "train_dataset")
    if rotations_list is not None:
        try:
            angles = [float(a) for a in rotations_list]
        except (TypeError, ValueError) as err:
            raise TypeError("rotations_list must be a sequence of angles in degrees") from err
        if len(angles) != n_experiences:
            raise ValueError(f"rotations_list must have n_experiences={n_experiences} angles, "
                             f"got {len(angles)}")
        if not all(math.isfinite(a) for a in angles):
            raise ValueError("rotations_list angles must be finite")
    else:
        angles = (torch.rand(n_experiences, generator=gen, dtype=torch.float64) * 360.0
                  - 180.0).tolist()
    rotations = [Rotation(a, len(shape), fill) for a in angles]
    return _domain_benchmark(train, test, rotations, task_labels, "rotated_benchmark")


# --------------------------------------------------------------------------------------------
# Data-incremental (online) streams
# --------------------------------------------------------------------------------------------

def data_incremental_benchmark(benchmark: CLBenchmark, experience_size: int,
                               shuffle: bool = False, drop_last: bool = False, *,
                               seed: int | None = None) -> CLBenchmark:
    """Cut every training experience into consecutive experiences of ``experience_size``.

    Used for online continual learning. Each new experience keeps its parent's task label;
    the test stream is kept as is. Experiences of tensor datasets are views of the parent's
    tensors (contiguous slices, no copy), so thousands of tiny experiences are cheap.

    Args:
        benchmark: the benchmark to cut.
        experience_size: samples per new experience (the last of a parent may be shorter).
        shuffle: shuffle each parent's samples first (one copy of the parent, then views),
            from a private generator seeded with ``seed``.
        drop_last: drop a parent's last experience when it is shorter than experience_size.
        seed: seeds ``shuffle``; None draws fresh entropy.
    """
    if not isinstance(benchmark, CLBenchmark):
        raise TypeError(f"benchmark must be a CLBenchmark, got {type(benchmark).__name__}")
    size = check_int("experience_size", experience_size, minimum=1)
    gen = _generator(check_seed("seed", seed)) if shuffle else None

    train_stream: list[Experience] = []
    original_in_exp: list[list[int]] = []
    for e, parent in enumerate(benchmark.train_stream):
        ds = parent.dataset
        n = len(ds)
        if gen is not None and n:
            ds = ds.subset(torch.randperm(n, generator=gen))
        n_chunks = n // size if drop_last else -(-n // size)
        to_original = _original_map(benchmark, e, parent)
        for chunk, classes in zip(range(n_chunks), _classes_per_chunk(ds.targets, size,
                                                                      n_chunks)):
            train_stream.append(Experience(
                dataset=_slice(ds, chunk * size, min(n, (chunk + 1) * size)),
                current_experience=len(train_stream),
                classes_in_this_experience=classes,
                task_label=parent.task_label,
                origin_stream="train"))
            original_in_exp.append([to_original.get(c, c) for c in classes])

    test_stream = [Experience(exp.dataset, exp.current_experience,
                              list(exp.classes_in_this_experience), exp.task_label,
                              exp.origin_stream) for exp in benchmark.test_stream]
    return CLBenchmark(train_stream=train_stream, test_stream=test_stream,
                       n_classes=benchmark.n_classes, classes_order=list(benchmark.classes_order),
                       task_labels=benchmark.task_labels,
                       name=f"{benchmark.name}_data_incremental_{size}",
                       original_classes_in_exp=original_in_exp)


def _original_map(benchmark: CLBenchmark, e: int, parent: Experience) -> dict[int, int]:
    originals = (benchmark.original_classes_in_exp[e]
                 if e < len(benchmark.original_classes_in_exp) else None)
    if originals is None or len(originals) != len(parent.classes_in_this_experience):
        return {}
    return dict(zip(parent.classes_in_this_experience, originals))


def _classes_per_chunk(targets: Tensor, size: int, n_chunks: int) -> list[list[int]]:
    """Sorted class ids in each chunk of ``size`` consecutive targets, in one pass."""
    if n_chunks == 0:
        return []
    t = targets[:n_chunks * size].cpu()  # drop_last leaves a tail out
    width = int(t.max()) + 1 if t.numel() else 1
    chunk = torch.arange(t.shape[0]) // size
    pairs = torch.unique(chunk * width + t)  # sorted by chunk, then class
    counts = torch.bincount(pairs // width, minlength=n_chunks).tolist()
    return [part.tolist() for part in torch.split(pairs % width, counts)]


def _slice(ds: CLDataset, start: int, stop: int) -> CLDataset:
    if isinstance(ds, TensorCLDataset):
        return TensorCLDataset(ds.x[start:stop], ds.targets[start:stop],
                               ds.task_labels[start:stop])
    if isinstance(ds, SubsetCLDataset):
        return SubsetCLDataset(ds.base, ds.indices[start:stop], ds.targets[start:stop],
                               ds.task_labels[start:stop], ds.transform)
    return ds.subset(range(start, stop))
