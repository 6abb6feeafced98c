"""Continual-learning metrics as pure functions of the accuracy matrix ``R``.

``R[i][j]`` is the accuracy on (test) experience ``j`` measured after training on experience
``i`` (0-based rows and columns; the usual square ``T x T`` matrix, or ``T x N`` with ``N >= T``
when later experiences were also evaluated). Entries that were never measured are ``NaN``.
Every function takes a numpy array or nested lists, returns plain floats, and returns ``NaN``
where the quantity is undefined (for example backward transfer after a single experience).

``after=k`` evaluates a metric at row ``k`` (the model after training on experience ``k``)
instead of the last row, which gives the metric's value along the stream.

References, with the 0-based indices used here:

* Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017,
  Sec. 2.1 (the ACC, BWT and FWT definitions).
* Chaudhry, Dokania, Ajanthan & Torr, "Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence", ECCV 2018, Sec. 4 (the forgetting measure).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy_matrix_from_metrics",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
]

Matrix = Any  # numpy array or nested sequences of numbers


def _as_matrix(R: Matrix) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"R must be a 2-D accuracy matrix, got shape {m.shape}")
    if m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError(f"R must have at least one row and one column, got shape {m.shape}")
    return m


def _row(m: np.ndarray, after: int | None) -> int:
    if after is None:
        return m.shape[0] - 1
    if not 0 <= after < m.shape[0]:
        raise ValueError(f"after must be in [0, {m.shape[0] - 1}], got {after}")
    return after


def _mean(values: Sequence[float]) -> float:
    # NaN (not an error) when nothing is defined: callers chart metrics along a stream.
    return float(np.mean(values)) if len(values) else math.nan


def average_accuracy(R: Matrix, after: int | None = None, seen_only: bool = False) -> float:
    """Average accuracy after training on experience ``k = after`` (default: the last row).

    GEM (Lopez-Paz & Ranzato 2017, Sec. 2.1): ``ACC = 1/N sum_j R[k][j]`` over every evaluated
    experience ``j`` (the stream accuracy over all test experiences, each weighted equally).
    With ``seen_only`` the mean runs over the experiences trained so far, ``j <= k``: the
    average accuracy ``A_k`` of Chaudhry et al. 2018.
    A ``NaN`` entry in the averaged range makes the result ``NaN``.
    """
    m = _as_matrix(R)
    k = _row(m, after)
    cols = m[k, : k + 1] if seen_only else m[k]
    return float(np.mean(cols))


def forgetting(R: Matrix, after: int | None = None, initial: bool = False) -> list[float]:
    """Forgetting of each experience ``j < k`` after training on ``k = after`` (default last).

    Chaudhry et al. 2018 ("Riemannian Walk", Sec. 4): ``f_j^k = max_{j <= l < k} R[l][j] -
    R[k][j]``, the drop from the best accuracy measured on ``j`` after it was learned and before
    the current model (rows where ``R[l][j]`` is ``NaN`` are skipped; rows before ``j`` was
    learned are not part of the definition: in a domain-incremental stream they can be high by
    transfer, and would count as forgetting what was never learned). With ``initial=True``,
    the reference library's variant
    ``R[j][j] - R[k][j]``: the drop from the accuracy right after learning ``j``.
    Returns ``k`` values (index ``j``), ``NaN`` where undefined.
    """
    m = _as_matrix(R)
    k = _row(m, after)
    out: list[float] = []
    for j in range(min(k, m.shape[1])):
        if initial:
            ref = m[j, j]
        else:
            previous = m[j:k, j]
            previous = previous[~np.isnan(previous)]
            ref = previous.max() if previous.size else math.nan
        out.append(float(ref - m[k, j]))
    return out


def average_forgetting(R: Matrix, after: int | None = None, initial: bool = False) -> float:
    """Average forgetting ``F_k = 1/k sum_{j<k} f_j^k`` (Chaudhry et al. 2018, Sec. 4).

    ``NaN`` after the first experience (nothing can be forgotten yet) or when any ``f_j^k``
    is undefined. See :func:`forgetting` for ``initial``.
    """
    return _mean(forgetting(R, after=after, initial=initial))


def backward_transfer(R: Matrix, after: int | None = None) -> float:
    """Backward transfer after training on ``k = after`` (default: the last row).

    GEM (Lopez-Paz & Ranzato 2017, Sec. 2.1): ``BWT = 1/k sum_{j<k} (R[k][j] - R[j][j])``.
    Negative values are forgetting; equal to ``-average_forgetting(R, initial=True)``.
    ``NaN`` when ``k == 0``.
    """
    m = _as_matrix(R)
    k = _row(m, after)
    return _mean([float(m[k, j] - m[j, j]) for j in range(min(k, m.shape[1]))])


def forward_transfer(R: Matrix, b: Sequence[float] | np.ndarray) -> float:
    """Forward transfer: how much learning earlier experiences helps on the next one.

    GEM (Lopez-Paz & Ranzato 2017, Sec. 2.1): ``FWT = 1/(N-1) sum_{j=1}^{N-1} (R[j-1][j] - b_j)``
    with ``b_j`` the accuracy on ``j`` of the model before any training (random
    initialisation). The sum runs over the experiences ``j >= 1`` whose row ``j - 1`` is in
    ``R``; ``NaN`` when there is none.
    """
    m = _as_matrix(R)
    base = np.asarray(b, dtype=np.float64)
    if base.ndim != 1 or base.shape[0] < m.shape[1]:
        raise ValueError(f"b must hold one accuracy per column of R ({m.shape[1]}), "
                         f"got shape {base.shape}")
    last = min(m.shape[1] - 1, m.shape[0])  # j - 1 must be a row of R
    return _mean([float(m[j - 1, j] - base[j]) for j in range(1, last + 1)])


_EXP_ACC = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/Task(?P<task>\d+)"
                      r"/Exp(?P<exp>\d+)$")


def accuracy_matrix_from_metrics(results: Sequence[Mapping[str, Any]],
                                 stream: str = "test_stream") -> list[list[float]]:
    """``R`` from one metrics dict per row, e.g. ``strategy.eval(test_stream)`` after each
    training experience: row ``i`` holds ``results[i]``'s ``Top1_Acc_Exp`` values of ``stream``.

    Columns run to the largest experience id seen; missing entries are ``NaN``. An experience
    holding several task labels gets the unweighted mean of its per-task accuracies.
    """
    rows: list[dict[int, list[float]]] = []
    n_cols = 0
    for result in results:
        row: dict[int, list[float]] = {}
        for name, value in result.items():
            match = _EXP_ACC.match(name)
            if match is None or match["stream"] != stream:
                continue
            exp = int(match["exp"])
            row.setdefault(exp, []).append(float(value))
            n_cols = max(n_cols, exp + 1)
        rows.append(row)
    return [[float(np.mean(row[j])) if j in row else math.nan for j in range(n_cols)]
            for row in rows]
