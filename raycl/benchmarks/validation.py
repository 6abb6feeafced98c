"""Validation streams: hold out part of every training experience to choose hyperparameters on.

Hyperparameters chosen on the test stream overfit it. :func:`benchmark_with_validation_stream`
(Avalanche's name and arguments) splits each training experience into a training part and a
validation part, so a study can select on ``valid_stream`` and report on ``test_stream``.

The split is class-stratified with one deterministic rounding rule (largest remainder), see
:func:`validation_counts`.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from raycl.benchmarks.base import CLBenchmark, CLDataset, Experience
from raycl.benchmarks.generators import _generator
from raycl.checks import check_bool, check_int, check_number, check_seed

__all__ = ["benchmark_with_validation_stream", "check_validation_size", "validation_counts"]

ValidationSize = float | int


def check_validation_size(validation_size: Any) -> int | Fraction:
    """``validation_size`` as an ``int`` (samples per experience) or an exact ``Fraction``.

    A float is read as the decimal it prints as (``0.3`` is exactly 3/10, not the binary
    double just below it), so ``0.3`` of 10 samples is 3, never 2.

    Raises:
        TypeError: neither an int nor a real number (``bool`` included).
        ValueError: an int below 1, or a float outside the open interval (0, 1).
    """
    if isinstance(validation_size, numbers.Integral) and not isinstance(validation_size, bool):
        return check_int("validation_size", validation_size, minimum=1)
    if isinstance(validation_size, numbers.Real) and not isinstance(validation_size, bool):
        share = check_number("validation_size", validation_size, 0.0, 1.0,
                             low_open=True, high_open=True)
        return Fraction(repr(share))
    raise TypeError("validation_size must be a float in (0, 1) (a fraction of each experience) "
                    f"or an int >= 1 (samples per experience), got "
                    f"{reprlib.repr(validation_size)} ({type(validation_size).__name__})")


def validation_counts(class_sizes: list[int], size: int | Fraction) -> list[int]:
    """How many samples of each class go to validation (the rounding rule).

    ``share`` is ``size`` itself for a fraction, ``size / n`` for an int (``n`` = the
    experience's samples); class ``c`` of ``n_c`` samples has the quota ``share * n_c``.

    1. The experience's total is ``size`` for an int, ``floor(share * n + 1/2)`` (the nearest
       integer, halves up) for a fraction.
    2. Every class gets ``floor(quota)``; the samples still missing from the total go one each
       to the classes with the largest fractional part of their quota, ties to the earlier
       class in ``class_sizes`` (callers list classes by ascending id).
    3. Every class keeps at least one training sample: a class is skipped in step 2 when it
       is at ``n_c - 1`` (so a class of one sample never gives it up).

    Each class therefore gets its quota rounded down or up (within 1 of it), unless step 3
    binds, which needs a share so close to 1 that a small class's quota exceeds ``n_c - 1``.

    Raises:
        ValueError: the total is 0, or more than the ``n - n_classes`` samples that can go
            while every class keeps one (the message names ``validation_size``).
    """
    n = sum(class_sizes)
    share = Fraction(size, n) if isinstance(size, int) and n else Fraction(size)
    quotas = [share * n_c for n_c in class_sizes]
    total = size if isinstance(size, int) else math.floor(share * n + Fraction(1, 2))
    caps = [max(n_c - 1, 0) for n_c in class_sizes]
    shown = size if isinstance(size, int) else f"{float(size):g}"
    if total < 1:
        raise ValueError(f"validation_size={shown} of {n} samples is no sample; "
                         "use a larger fraction or an int")
    if total > sum(caps):
        raise ValueError(f"validation_size={shown} asks for {total} of {n} samples but at most "
                         f"{sum(caps)} can go to validation while each of the "
                         f"{len(class_sizes)} classes keeps a training sample")
    counts = [math.floor(q) for q in quotas]  # <= n_c - 1 as share < 1
    missing = total - sum(counts)
    order = sorted(range(len(class_sizes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    while missing:  # one pass unless step 3 binds; total <= sum(caps) ends it
        for i in order:
            if missing and counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
    return counts


def _split_indices(targets: Tensor, size: int | Fraction,
                   gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Train and validation positions of one experience, each ascending (dataset order)."""
    targets = targets.cpu()
    n = int(targets.shape[0])
    classes, sizes = torch.unique(targets, return_counts=True)  # ascending ids
    counts = validation_counts(sizes.tolist(), size)
    # Validation takes the last `count` members of each class in `order`: the dataset's order
    # (shuffle=False, Avalanche's "last ones") or one seeded permutation of the experience.
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    ordered_targets = targets[order]
    valid = torch.zeros(n, dtype=torch.bool)
    for c, n_c, count in zip(classes.tolist(), sizes.tolist(), counts):
        if count:
            members = order[ordered_targets == c]
            valid[members[n_c - count:]] = True
    return torch.nonzero(~valid).flatten(), torch.nonzero(valid).flatten()


def _subset(dataset: CLDataset, idx: Tensor, e: int) -> CLDataset:
    try:
        return dataset.subset(idx)
    except (NotImplementedError, AttributeError):
        raise TypeError(f"benchmark: train experience {e} holds a {type(dataset).__name__}, "
                        "which cannot be split (it has no subset())") from None


def benchmark_with_validation_stream(benchmark: CLBenchmark,
                                     validation_size: ValidationSize = 0.1,
                                     shuffle: bool = True,
                                     seed: int | None = None) -> CLBenchmark:
    """``benchmark`` with each training experience split into a training and a validation part.

    Follows Avalanche's ``benchmark_with_validation_stream`` (a float is a fraction of each
    experience, an int a number of samples per experience, ``shuffle=False`` sends each
    experience's last samples to validation), but the split is class-stratified: every class
    of an experience gives its share (rounding rule: :func:`validation_counts`), and keeps at
    least one training sample.

    Args:
        benchmark: the benchmark to split; it must not have a validation stream already.
        validation_size: a float in (0, 1), the fraction of each training experience held out
            (its total rounded to the nearest integer, halves up), or an int >= 1, the number
            of samples held out of each training experience.
        shuffle: choose each class's validation samples at random (one permutation of each
            experience, drawn in experience order from a private generator seeded with
            ``seed``); ``False`` takes the last ones of each class in the dataset's order.
        seed: seeds ``shuffle`` (the same seed gives the same split); None draws fresh
            entropy. Torch's global RNG is neither used nor reseeded.

    Returns:
        A new :class:`CLBenchmark` whose ``train_stream`` holds new experiences over the
        training parts and whose ``valid_stream`` holds their validation parts
        (``origin_stream="valid"``, so metrics are named ``.../valid_stream/...``). Both parts
        keep the dataset's sample order, are disjoint and together hold exactly the original
        samples; each keeps its experience's ``current_experience``, ``task_label`` and
        ``classes_in_this_experience`` (the experience's classes, even when a class's share
        rounds to no validation sample). ``test_stream`` holds the same experience objects
        (now linked to the new benchmark); the other fields are copied.

    Raises:
        TypeError: ``benchmark`` is not a CLBenchmark, an argument has the wrong type, or an
            experience's dataset has no ``subset``.
        ValueError: ``validation_size`` out of range or too large / too small for an
            experience, or ``benchmark`` already has a validation stream.
    """
    if not isinstance(benchmark, CLBenchmark):
        raise TypeError(f"benchmark must be a CLBenchmark, got {type(benchmark).__name__}")
    size = check_validation_size(validation_size)
    shuffle = check_bool("shuffle", shuffle)
    seed = check_seed("seed", seed)
    if benchmark.valid_stream:
        raise ValueError(f"benchmark {benchmark.name!r} already has a validation stream of "
                         f"{len(benchmark.valid_stream)} experiences; split it only once")
    gen = _generator(seed) if shuffle else None

    train_stream: list[Experience] = []
    valid_stream: list[Experience] = []
    for e, exp in enumerate(benchmark.train_stream):
        try:
            train_idx, valid_idx = _split_indices(exp.dataset.targets, size, gen)
        except ValueError as err:
            raise ValueError(f"train experience {e}: {err}") from None
        for stream, idx, origin in ((train_stream, train_idx, "train"),
                                    (valid_stream, valid_idx, "valid")):
            stream.append(Experience(
                dataset=_subset(exp.dataset, idx, e),
                current_experience=exp.current_experience,
                classes_in_this_experience=list(exp.classes_in_this_experience),
                task_label=exp.task_label,
                origin_stream=origin))

    return CLBenchmark(
        train_stream=train_stream, test_stream=list(benchmark.test_stream),
        n_classes=benchmark.n_classes, classes_order=list(benchmark.classes_order),
        task_labels=benchmark.task_labels, name=benchmark.name,
        original_classes_in_exp=[list(c) for c in benchmark.original_classes_in_exp],
        valid_stream=valid_stream)
