"""The accuracy-matrix metrics on hand-built matrices with hand-computed answers."""

import math

import numpy as np
import pytest

from raycl.evaluation.functional import (
    accuracy_matrix_from_metrics,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    forward_transfer,
)

# R[i][j]: accuracy on experience j after training on experience i. Experience 0 improves
# after training on 1 (0.9 -> 0.95) before dropping, so "best" and "initial" forgetting differ.
R = [
    [0.90, 0.10, 0.00],
    [0.95, 0.80, 0.20],
    [0.50, 0.70, 0.95],
]


def test_average_accuracy_over_all_and_seen_experiences():
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.95) / 3)
    assert average_accuracy(R, after=1) == pytest.approx((0.95 + 0.80 + 0.20) / 3)
    assert average_accuracy(R, after=1, seen_only=True) == pytest.approx((0.95 + 0.80) / 2)
    assert average_accuracy(R, after=0, seen_only=True) == pytest.approx(0.90)
    assert average_accuracy(np.array(R)) == pytest.approx(average_accuracy(R))


def test_forgetting_best_is_chaudhry_max_over_previous_rows():
    # f_0 = max(0.90, 0.95) - 0.50, f_1 = max(0.10, 0.80) - 0.70
    assert forgetting(R) == pytest.approx([0.45, 0.10])
    assert average_forgetting(R) == pytest.approx(0.275)


def test_forgetting_initial_is_the_reference_librarys_variant():
    # f_0 = R[0][0] - R[2][0], f_1 = R[1][1] - R[2][1]
    assert forgetting(R, initial=True) == pytest.approx([0.40, 0.10])
    assert average_forgetting(R, initial=True) == pytest.approx(0.25)


def test_forgetting_along_the_stream_and_undefined_at_the_start():
    assert forgetting(R, after=1) == pytest.approx([0.90 - 0.95])
    assert forgetting(R, after=0) == []
    assert math.isnan(average_forgetting(R, after=0))


def test_forgetting_best_skips_unmeasured_entries():
    m = [[math.nan, 0.0], [0.6, 0.9], [0.2, 0.5]]
    assert forgetting(m) == pytest.approx([0.4, 0.4])


def test_backward_transfer_gem_definition():
    # mean(R[2][0] - R[0][0], R[2][1] - R[1][1])
    assert backward_transfer(R) == pytest.approx(((0.50 - 0.90) + (0.70 - 0.80)) / 2)
    assert backward_transfer(R, after=1) == pytest.approx(0.95 - 0.90)
    assert math.isnan(backward_transfer(R, after=0))


def test_backward_transfer_is_minus_initial_forgetting():
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.uniform(size=(4, 4))
        assert backward_transfer(m) == pytest.approx(-average_forgetting(m, initial=True))


def test_forward_transfer_gem_definition():
    b = [0.10, 0.05, 0.10]
    # mean(R[0][1] - b_1, R[1][2] - b_2)
    assert forward_transfer(R, b) == pytest.approx(((0.10 - 0.05) + (0.20 - 0.10)) / 2)
    # one trained row still defines the transfer to experience 1
    assert forward_transfer([R[0]], b) == pytest.approx(0.10 - 0.05)
    assert math.isnan(forward_transfer([[0.9]], [0.1]))


def test_nan_entries_make_results_nan():
    m = [[0.9, 0.1], [math.nan, 0.8]]
    assert math.isnan(average_accuracy(m))
    assert math.isnan(backward_transfer(m))
    assert average_accuracy(m, seen_only=True, after=0) == pytest.approx(0.9)


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="2-D"):
        average_accuracy([0.1, 0.2])
    with pytest.raises(ValueError, match="after"):
        backward_transfer(R, after=3)
    with pytest.raises(ValueError, match="b must"):
        forward_transfer(R, [0.1, 0.2])


def test_accuracy_matrix_from_metrics_rows_are_results():
    results = [
        {"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000": 0.9,
         "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001": 0.1,
         "Top1_Acc_Exp/eval_phase/train_stream/Task000/Exp001": 0.7,  # other stream: ignored
         "Top1_Acc_Stream/eval_phase/test_stream/Task000": 0.5},
        {"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000": 0.6,
         "Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001": 0.8,
         "Top1_Acc_Exp/eval_phase/test_stream/Task002/Exp001": 0.6},
    ]
    m = accuracy_matrix_from_metrics(results)
    assert m == [[0.9, 0.1], [0.6, pytest.approx(0.7)]]
    train = accuracy_matrix_from_metrics(results, stream="train_stream")
    assert math.isnan(train[0][0]) and train[0][1] == 0.7
    assert all(math.isnan(v) for v in train[1])


def test_forgetting_counts_only_rows_after_the_experience_was_learned():
    """Chaudhry et al. 2018: max over rows j <= l < k. Experience 1 scores 0.95 before it is
    learned (transfer in a domain-incremental stream) and 0.90 after: forgetting is measured
    from 0.90. The trials' avg_forgetting and the analysis' per-experience forgetting agree."""
    import pandas as pd

    from raycl.analysis import forgetting_per_experience
    from raycl.evaluation.functional import average_forgetting, forgetting

    R = [[0.90, 0.95, 0.60],
         [0.80, 0.90, 0.50],
         [0.70, 0.60, 0.95]]
    assert forgetting(R) == pytest.approx([0.90 - 0.70, 0.90 - 0.60])
    assert average_forgetting(R) == pytest.approx(0.25)
    matrix = pd.DataFrame([{"trial_id": "t", "seed": 0, "split": "test", "trained_exp": i,
                            "eval_exp": j, "accuracy": R[i][j]}
                           for i in range(3) for j in range(3)])
    per_exp = forgetting_per_experience(matrix)
    assert per_exp.sort_values("eval_exp")["forgetting"].tolist() == pytest.approx([0.2, 0.3])
