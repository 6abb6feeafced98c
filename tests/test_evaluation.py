"""Metrics as plugins, the EvaluationPlugin and the loggers.

Most tests drive an evaluator through the strategy's callback sequence with a fake strategy
(a SimpleNamespace holding the fields metrics read), with outputs built so every accuracy is
known by hand; one test runs the real ``Naive`` loop.
"""

from __future__ import annotations

import csv
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from raycl.benchmarks.base import CLBenchmark, Experience, TensorCLDataset
from raycl.evaluation import (
    CSVLogger,
    EvaluationPlugin,
    InteractiveLogger,
    TextLogger,
    accuracy_matrix_from_metrics,
    accuracy_metrics,
    backward_transfer,
    bwt_metrics,
    confusion_matrix_metrics,
    default_evaluator,
    forgetting,
    forgetting_metrics,
    forward_transfer,
    forward_transfer_metrics,
    gpu_usage_metrics,
    loss_metrics,
    ram_usage_metrics,
    timing_metrics,
)
from raycl.plugins.base import HOOKS

N_CLASSES = 4


# ---- a fake strategy that fires callbacks in the loop's order --------------------------------
def batch(n_correct: int, n: int, task: int | list[int] = 0, loss: float = 1.0) -> dict:
    """A minibatch of ``n`` samples of which the first ``n_correct`` are predicted right."""
    y = torch.arange(n) % N_CLASSES
    pred = torch.where(torch.arange(n) < n_correct, y, (y + 1) % N_CLASSES)
    tasks = torch.full((n,), task) if isinstance(task, int) else torch.tensor(task)
    return {"y": y, "out": nn.functional.one_hot(pred, N_CLASSES).float(), "t": tasks,
            "loss": torch.tensor(loss)}


def experience(j: int, origin: str = "test", task: int = 0) -> Experience:
    ds = TensorCLDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), task)
    return Experience(ds, j, [j], task, origin)


class Driver:
    """Fires an evaluator's callbacks the way ``raycl.training.strategy`` does."""

    def __init__(self, evaluator: EvaluationPlugin) -> None:
        self.ev = evaluator
        self.hooks = evaluator.active_hooks()
        clock = SimpleNamespace(train_iterations=0, train_exp_counter=0, train_exp_epochs=0,
                                train_exp_iterations=0, train_epoch_iterations=0,
                                total_iterations=0)
        self.s = SimpleNamespace(
            is_training=False, experience=None, clock=clock, mb_x=None, mb_y=None,
            mb_task_id=None, mb_output=None, loss=None, train_mb_size=4, train_epochs=1,
            eval_mb_size=4, device=torch.device("cpu"), eval_stream_name="test_stream",
            current_eval_stream=[], adapted_dataset=None)

    def fire(self, hook: str) -> None:
        if hook in self.hooks:  # the strategy dispatches only the active callbacks
            getattr(self.ev, hook)(self.s)

    def _load(self, b: dict) -> None:
        self.s.mb_y, self.s.mb_output, self.s.mb_task_id, self.s.loss = (
            b["y"], b["out"], b["t"], b["loss"])

    def train_exp(self, exp: Experience, epochs: list[list[dict]],
                  eval_after_epoch: list[tuple[Experience, list[dict]]] | None = None) -> None:
        s, clock = self.s, self.s.clock
        s.is_training, s.experience, s.adapted_dataset = True, exp, exp.dataset
        s.train_epochs = len(epochs)
        clock.train_exp_epochs = clock.train_exp_iterations = 0
        self.fire("before_training")
        self.fire("before_training_exp")
        for batches in epochs:
            self.fire("before_training_epoch")
            for b in batches:
                self._load(b)
                for h in ("before_training_iteration", "before_forward", "after_forward",
                          "before_backward", "after_backward", "before_update", "after_update",
                          "after_training_iteration"):
                    self.fire(h)
                clock.train_iterations += 1
                clock.train_exp_iterations += 1
            self.fire("after_training_epoch")
            clock.train_exp_epochs += 1
            if eval_after_epoch:  # periodic evaluation inside the experience
                self.eval(eval_after_epoch)
                s.is_training, s.experience = True, exp
        self.fire("after_training_exp")
        clock.train_exp_counter += 1
        self.fire("after_training")
        s.is_training = False

    def eval(self, stream: list[tuple[Experience, list[dict]]]) -> dict:
        s = self.s
        was_training, s.is_training = s.is_training, False
        s.current_eval_stream = [e for e, _ in stream]
        s.eval_stream_name = f"{stream[0][0].origin_stream}_stream"
        self.fire("before_eval")
        for exp, batches in stream:
            s.experience = exp
            self.fire("before_eval_dataset_adaptation")
            self.fire("after_eval_dataset_adaptation")
            self.fire("before_eval_exp")
            for b in batches:
                self._load(b)
                for h in ("before_eval_iteration", "before_eval_forward", "after_eval_forward",
                          "after_eval_iteration"):
                    self.fire(h)
            self.fire("after_eval_exp")
        self.fire("after_eval")
        s.is_training = was_training
        return self.ev.get_last_metrics()


def acc_stream(accs: list[float], n: int = 10) -> list[tuple[Experience, list[dict]]]:
    """A test stream where experience j has accuracy ``accs[j]`` (n samples each)."""
    return [(experience(j), [batch(round(a * n), n)]) for j, a in enumerate(accs)]


# The accuracy matrix the CL tests replay: R[i][j] after training on i, and b before training.
R = [[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 1.0]]
B = [0.1, 0.0, 0.2]


def run_matrix(evaluator: EvaluationPlugin, initial_eval: bool = True) -> Driver:
    d = Driver(evaluator)
    if initial_eval:
        d.eval(acc_stream(B))
    for i, row in enumerate(R):
        d.train_exp(experience(i, "train"), [[batch(3, 4)]])
        d.eval(acc_stream(row))
    return d


# ---- names and values -----------------------------------------------------------------------
def test_default_evaluator_names_and_values():
    d = Driver(default_evaluator())
    d.train_exp(experience(0, "train"), [[batch(4, 4, loss=2.0)], [batch(1, 4), batch(2, 4)]])
    d.eval(acc_stream([0.9, 0.2]))
    d.train_exp(experience(1, "train"), [[batch(2, 4)]])
    last = d.eval(acc_stream([0.6, 0.8]))
    assert set(last) == {
        "Top1_Acc_Epoch/train_phase/train_stream/Task000",
        "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000",
        "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001",
        "Top1_Acc_Stream/eval_phase/test_stream/Task000",
        "Loss_Exp/eval_phase/test_stream/Task000/Exp000",
        "Loss_Exp/eval_phase/test_stream/Task000/Exp001",
        "Loss_Stream/eval_phase/test_stream/Task000",
        "ExperienceForgetting/eval_phase/test_stream/Task000/Exp000",
        "StreamForgetting/eval_phase/test_stream",
    }
    assert last["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001"] == pytest.approx(0.8)
    assert last["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(0.7)
    assert last["ExperienceForgetting/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(0.3)
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(0.3)
    assert last["Top1_Acc_Epoch/train_phase/train_stream/Task000"] == pytest.approx(0.5)
    history = d.ev.get_all_metrics()
    xs, vs = history["Top1_Acc_Epoch/train_phase/train_stream/Task000"]
    assert xs == [1, 3, 4]  # clock.train_iterations when each epoch ended
    assert vs == pytest.approx([1.0, 3 / 8, 0.5])
    # forgetting after the first experience: nothing forgotten yet, reported as 0 (Avalanche)
    assert history["StreamForgetting/eval_phase/test_stream"][1][0] == 0.0


def test_granularities_and_loss_weighting():
    ev = EvaluationPlugin(
        accuracy_metrics(minibatch=True, epoch=True, epoch_running=True, experience=True,
                         stream=True, trained_experience=True),
        loss_metrics(minibatch=True, epoch=True, epoch_running=True, experience=True,
                     stream=True))
    d = Driver(ev)
    d.train_exp(experience(0, "train"), [[batch(4, 4, loss=1.0), batch(0, 2, loss=4.0)]])
    hist = ev.get_all_metrics()
    assert hist["Top1_Acc_MB/train_phase/train_stream/Task000"][1] == [1.0, 0.0]
    assert hist["Top1_RunningAcc_Epoch/train_phase/train_stream/Task000"][1] == \
        pytest.approx([1.0, 4 / 6])
    assert hist["Loss_MB/train_phase/train_stream/Task000"][1] == [1.0, 4.0]
    # loss means weight each minibatch by its size: (1*4 + 4*2) / 6
    assert hist["Loss_Epoch/train_phase/train_stream/Task000"][1] == [pytest.approx(2.0)]
    assert hist["RunningLoss_Epoch/train_phase/train_stream/Task000"][1] == \
        pytest.approx([1.0, 2.0])
    last = d.eval([(experience(0), [batch(3, 4, loss=0.5)]),
                   (experience(1), [batch(1, 4, loss=1.5), batch(0, 4, loss=1.5)])])
    assert last["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(4 / 12)
    assert last["Loss_Stream/eval_phase/test_stream/Task000"] == pytest.approx(14 / 12)
    # trained on experience 0 only
    assert last["Accuracy_On_Trained_Experiences/eval_phase/test_stream/Task000"] == \
        pytest.approx(0.75)


def test_multi_task_stream_reports_one_value_per_task_label():
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                          loss_metrics(stream=True))
    d = Driver(ev)
    # a replay-like minibatch mixing task 0 (3 of 4 right) and task 1 (0 of 2 right)
    mixed = batch(3, 6, task=[0, 0, 0, 0, 1, 1])
    d.train_exp(experience(1, "train", task=1), [[mixed]])
    last = d.eval([(experience(0, task=0), [batch(2, 4, task=0)]),
                   (experience(1, task=1), [batch(4, 4, task=1), batch(3, 4, task=1)])])
    assert last["Top1_Acc_Epoch/train_phase/train_stream/Task000"] == pytest.approx(0.75)
    assert last["Top1_Acc_Epoch/train_phase/train_stream/Task001"] == 0.0
    assert last["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"] == pytest.approx(7 / 8)
    assert last["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(0.5)
    assert last["Top1_Acc_Stream/eval_phase/test_stream/Task001"] == pytest.approx(7 / 8)
    assert "Loss_Stream/eval_phase/test_stream/Task000" in last
    assert "Loss_Stream/eval_phase/test_stream/Task001" in last


# ---- forgetting, BWT, FWT against the functional definitions --------------------------------
def test_transfer_metrics_follow_the_accuracy_matrix():
    ev = EvaluationPlugin(accuracy_metrics(experience=True),
                          forgetting_metrics(experience=True, stream=True),
                          bwt_metrics(experience=True, stream=True),
                          forward_transfer_metrics(experience=True, stream=True))
    d = run_matrix(ev)
    assert ev.accuracy_matrix() == [[pytest.approx(v) for v in row] for row in R]
    assert ev.initial_accuracies() == pytest.approx(B)
    last = ev.get_last_metrics()
    f = forgetting(R, initial=True)
    for j in range(2):
        assert last[f"ExperienceForgetting/eval_phase/test_stream/Task000/Exp{j:03}"] == \
            pytest.approx(f[j])
        assert last[f"ExperienceBWT/eval_phase/test_stream/Task000/Exp{j:03}"] == \
            pytest.approx(-f[j])
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(sum(f) / 2)
    assert last["StreamBWT/eval_phase/test_stream"] == pytest.approx(backward_transfer(R))
    assert last["StreamForwardTransfer/eval_phase/test_stream"] == \
        pytest.approx(forward_transfer(R, B))
    fwt = d.ev.get_all_metrics()
    # experience j's forward transfer is emitted right after training on j - 1
    assert fwt["ExperienceForwardTransfer/eval_phase/test_stream/Task000/Exp001"][1] == \
        [pytest.approx(R[0][1] - B[1])]
    assert fwt["ExperienceForwardTransfer/eval_phase/test_stream/Task000/Exp002"][1] == \
        [pytest.approx(R[1][2] - B[2])]


def test_forgetting_best_reference_uses_the_best_previous_accuracy():
    ev = EvaluationPlugin(forgetting_metrics(stream=True, reference="best"))
    d = Driver(ev)
    rows = [[0.5, 0.0], [0.9, 0.8], [0.2, 0.6]]  # experience 0 peaks after training on 1
    for i, row in enumerate(rows):
        d.train_exp(experience(i, "train"), [[batch(1, 4)]])
        last = d.eval(acc_stream(row))
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(
        sum(forgetting(rows)) / 2)
    assert forgetting(rows) == pytest.approx([0.7, 0.2])


def test_forward_transfer_without_initial_eval_warns_and_uses_first_measurement():
    ev = EvaluationPlugin(forward_transfer_metrics(stream=True))
    with pytest.warns(UserWarning, match="untrained"):
        run_matrix(ev, initial_eval=False)
    # baseline b_j = first accuracy measured on j: R[0][j]; FWT_1 is then 0 by construction
    expected = ((R[0][1] - R[0][1]) + (R[1][2] - R[0][2])) / 2
    assert ev.get_last_metrics()["StreamForwardTransfer/eval_phase/test_stream"] == \
        pytest.approx(expected)


def test_periodic_eval_inside_an_experience_belongs_to_that_experience():
    ev = EvaluationPlugin(accuracy_metrics(experience=True), forgetting_metrics(stream=True))
    d = Driver(ev)
    d.eval(acc_stream([0.0, 0.0]))  # untrained: row -1
    d.train_exp(experience(0, "train"), [[batch(1, 4)], [batch(1, 4)]],
                eval_after_epoch=acc_stream([0.5, 0.1]))
    d.train_exp(experience(1, "train"), [[batch(1, 4)], [batch(1, 4)]],
                eval_after_epoch=acc_stream([0.3, 0.9]))
    assert ev.accuracy_matrix() == [[0.5, 0.1], [0.3, 0.9]]
    assert ev.get_last_metrics()["StreamForgetting/eval_phase/test_stream"] == \
        pytest.approx(0.2)


def test_streams_keep_separate_matrices():
    ev = EvaluationPlugin(accuracy_metrics(experience=True), forgetting_metrics(stream=True))
    d = Driver(ev)
    for i, (test_row, train_row) in enumerate([([0.9, 0.0], [1.0, 0.0]),
                                               ([0.4, 0.8], [1.0, 1.0])]):
        d.train_exp(experience(i, "train"), [[batch(1, 4)]])
        d.eval(acc_stream(test_row))
        last = d.eval([(experience(j, "train"), [batch(round(a * 10), 10)])
                       for j, a in enumerate(train_row)])
    assert last["StreamForgetting/eval_phase/train_stream"] == pytest.approx(0.0)
    assert last["StreamForgetting/eval_phase/test_stream"] == pytest.approx(0.5)
    assert ev.accuracy_matrix("train_stream") == [[1.0, 0.0], [1.0, 1.0]]


# ---- the loss matrix --------------------------------------------------------------------------
def loss_stream(losses: list[float], exps: list[int] | None = None, origin: str = "test"
                ) -> list[tuple[Experience, list[dict]]]:
    """Experiences ``exps`` (default 0..) whose one minibatch of 4 has loss ``losses[k]`` and
    accuracy ``(k % 4) / 4``."""
    exps = list(range(len(losses))) if exps is None else exps
    return [(experience(j, origin), [batch(k % 4, 4, loss=loss)])
            for k, (j, loss) in enumerate(zip(exps, losses))]


def test_loss_matrix_holds_the_loss_of_each_row_and_experience():
    ev = EvaluationPlugin(loss_metrics(experience=True))
    d = Driver(ev)
    d.eval(loss_stream([9.0, 9.0]))  # the untrained model: not a row of the matrix
    assert ev.loss_matrix() == []
    d.train_exp(experience(0, "train"), [[batch(1, 4)]])
    # experience 0 only, two minibatches weighted by size: (1.0 * 4 + 4.0 * 2) / 6
    d.eval([(experience(0), [batch(1, 4, loss=1.0), batch(1, 2, loss=4.0)])])
    d.train_exp(experience(1, "train"), [[batch(1, 4)]])
    d.eval(loss_stream([0.5, 3.0]))
    d.eval(loss_stream([0.25], exps=[1]))  # a later evaluation of the same row wins
    L = ev.loss_matrix()
    assert L[0][0] == pytest.approx(2.0)
    assert math.isnan(L[0][1])  # experience 1 was never evaluated after training on 0
    assert L[1] == [0.5, 0.25]
    assert len(L) == 2
    hist = ev.get_all_metrics()["Loss_Exp/eval_phase/test_stream/Task000/Exp001"][1]
    assert hist == [9.0, 3.0, 0.25]  # the names are unchanged
    with pytest.raises(ValueError, match=r"loss_matrix needs loss_metrics\(experience=True\)"):
        EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(stream=True)).loss_matrix()
    with pytest.raises(ValueError, match="accuracy_metrics"):
        ev.accuracy_matrix()


def test_loss_and_accuracy_matrices_have_the_same_layout():
    ev = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(experience=True))
    d = Driver(ev)
    for i, losses in enumerate([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]):
        d.train_exp(experience(i, "train"), [[batch(1, 4)]])
        d.eval(loss_stream(losses))
    assert ev.loss_matrix() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert ev.accuracy_matrix() == [[0.0, 0.25, 0.5], [0.0, 0.25, 0.5]]
    assert ev.loss_matrix("train_stream") == []


def test_matrices_survive_a_state_dict_round_trip(tmp_path):
    def make():
        return EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(experience=True))

    def same(a, b):
        np.testing.assert_array_equal(np.array(a, dtype=float), np.array(b, dtype=float))

    d = Driver(make())
    d.eval(acc_stream(B))
    d.train_exp(experience(0, "train"), [[batch(1, 4)]])
    d.eval(loss_stream([0.5], exps=[0]))  # experience 1 not evaluated: NaN entries
    d.eval(loss_stream([0.75, 0.875], origin="train"))
    torch.save(d.ev.state_dict(), tmp_path / "ev.pt")
    resumed = Driver(make())
    resumed.ev.load_state_dict(torch.load(tmp_path / "ev.pt", weights_only=True))
    resumed.s.clock = SimpleNamespace(**vars(d.s.clock))
    for stream in ("test_stream", "train_stream"):
        same(resumed.ev.accuracy_matrix(stream), d.ev.accuracy_matrix(stream))
        same(resumed.ev.loss_matrix(stream), d.ev.loss_matrix(stream))
    same(resumed.ev.initial_accuracies(), B)
    assert resumed.ev.loss_matrix("train_stream") == [[0.75, 0.875]]
    # both go on the same way: the resumed matrices are the uninterrupted run's
    for driver in (d, resumed):
        driver.train_exp(experience(1, "train"), [[batch(1, 4)]])
        driver.eval(loss_stream([1.5, 2.5]))
    same(resumed.ev.loss_matrix(), d.ev.loss_matrix())
    same(resumed.ev.accuracy_matrix(), d.ev.accuracy_matrix())
    # columns run to the last experience ever evaluated (the untrained model's 3)
    same(d.ev.loss_matrix(), [[0.5, math.nan, math.nan], [1.5, 2.5, math.nan]])


# ---- the evaluator ----------------------------------------------------------------------------
def test_hooks_are_only_the_ones_metrics_need():
    per_iteration = {"before_training_iteration", "before_forward", "after_forward",
                     "before_backward", "after_backward", "before_update", "after_update",
                     "after_training_iteration", "before_eval_iteration", "before_eval_forward",
                     "after_eval_forward", "after_eval_iteration"}
    assert default_evaluator().active_hooks() & per_iteration == {
        "after_training_iteration", "after_eval_iteration"}
    eval_only = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(stream=True))
    assert "after_training_iteration" not in eval_only.active_hooks()
    assert "after_training_epoch" not in eval_only.active_hooks()
    assert EvaluationPlugin().active_hooks() <= {"before_training", "before_training_exp",
                                                 "after_training_exp", "after_training"}
    assert default_evaluator().active_hooks() <= set(HOOKS)


def test_per_iteration_callbacks_never_read_values_back_from_the_device():
    # Meta tensors have no data: .item(), .tolist() or bool() on them raise. Per-iteration
    # callbacks must only queue tensor work, so they run fine on meta tensors.
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True,
                                           trained_experience=True),
                          loss_metrics(epoch=True, experience=True, stream=True),
                          forgetting_metrics(experience=True, stream=True),
                          bwt_metrics(stream=True), forward_transfer_metrics(stream=True),
                          confusion_matrix_metrics(num_classes=N_CLASSES))
    s = Driver(ev).s
    s.experience = experience(0, "train")
    s.mb_output = torch.empty(8, N_CLASSES, device="meta")
    s.mb_y = torch.empty(8, dtype=torch.long, device="meta")
    s.mb_task_id = torch.empty(8, dtype=torch.long, device="meta")
    s.loss = torch.empty((), device="meta")
    s.is_training = True
    for _ in range(3):
        ev.after_training_iteration(s)
    s.is_training = False
    for _ in range(3):
        ev.after_eval_iteration(s)
    with pytest.raises((RuntimeError, NotImplementedError)):
        ev.after_training_epoch(s)  # the once-per-epoch reduction does read back


def test_get_last_all_reset_and_collect_all():
    ev = EvaluationPlugin([accuracy_metrics(experience=True)], collect_all=False)
    d = Driver(ev)
    d.eval(acc_stream([0.5]))
    last = ev.get_last_metrics()
    last["junk"] = 1.0  # a copy
    assert "junk" not in ev.get_last_metrics()
    assert ev.get_all_metrics() == {}
    ev.reset_last_metrics()
    assert ev.get_last_metrics() == {}


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="metrics"):
        EvaluationPlugin("Top1_Acc_Exp")
    with pytest.raises(TypeError, match="loggers"):
        EvaluationPlugin(loggers=[object()])
    with pytest.raises(ValueError, match="reference"):
        forgetting_metrics(stream=True, reference="max")
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix_metrics(num_classes=0)
    with pytest.raises(ValueError, match="normalize"):
        confusion_matrix_metrics(normalize="rows")
    with pytest.raises(ValueError, match="every"):
        ram_usage_metrics(every=0, epoch=True)
    with pytest.raises(ValueError, match="every"):
        InteractiveLogger(every=-1)
    with pytest.raises(ValueError, match="accuracy_metrics"):
        EvaluationPlugin(loss_metrics(stream=True)).accuracy_matrix()


def test_state_dict_round_trip_reproduces_an_uninterrupted_run(tmp_path):
    def make():
        return EvaluationPlugin(
            accuracy_metrics(epoch=True, experience=True, stream=True, trained_experience=True),
            loss_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            bwt_metrics(experience=True, stream=True),
            forward_transfer_metrics(experience=True, stream=True),
            confusion_matrix_metrics())

    def first_half(d):
        d.eval(acc_stream(B))
        d.train_exp(experience(0, "train"), [[batch(3, 4)]])
        d.eval(acc_stream(R[0]))

    def second_half(d):
        for i in (1, 2):
            d.train_exp(experience(i, "train"), [[batch(3, 4)]])
            d.eval(acc_stream(R[i]))

    full = Driver(make())
    first_half(full)
    second_half(full)

    interrupted = Driver(make())
    first_half(interrupted)
    torch.save(interrupted.ev.state_dict(), tmp_path / "ev.pt")
    resumed = Driver(make())
    resumed.ev.load_state_dict(torch.load(tmp_path / "ev.pt", weights_only=True))
    resumed.s.clock = interrupted.s.clock  # the strategy restores its clock alongside
    second_half(resumed)

    a, b = full.ev.get_all_metrics(), resumed.ev.get_all_metrics()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][0] == b[name][0], name
        for va, vb in zip(a[name][1], b[name][1]):
            assert torch.equal(va, vb) if torch.is_tensor(va) else va == vb, name
    assert full.ev.accuracy_matrix() == resumed.ev.accuracy_matrix()

    with pytest.raises(ValueError, match="metrics"):
        EvaluationPlugin(accuracy_metrics(stream=True)).load_state_dict(full.ev.state_dict())


# ---- other metrics ------------------------------------------------------------------------
def test_confusion_matrix_counts_and_normalisation():
    out = nn.functional.one_hot(torch.tensor([0, 1, 1, 3]), N_CLASSES).float()
    b = {"y": torch.tensor([0, 0, 1, 2]), "out": out, "t": torch.zeros(4, dtype=torch.long),
         "loss": torch.tensor(0.0)}
    name = "ConfusionMatrix_Stream/eval_phase/test_stream"
    counts = Driver(EvaluationPlugin(confusion_matrix_metrics())).eval(
        [(experience(0), [b]), (experience(1), [b])])[name]
    expected = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
    for t, p in [(0, 0), (0, 1), (1, 1), (2, 3)]:
        expected[t, p] = 2
    assert torch.equal(counts, expected)
    rows = Driver(EvaluationPlugin(confusion_matrix_metrics(normalize="true"))).eval(
        [(experience(0), [b])])[name]
    assert torch.allclose(rows[0], torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.equal(rows[3], torch.zeros(N_CLASSES, dtype=torch.float64))  # class never seen


def test_resource_metrics_names():
    ev = EvaluationPlugin(timing_metrics(minibatch=True, epoch=True, epoch_running=True,
                                         experience=True, stream=True),
                          ram_usage_metrics(minibatch=True, epoch=True, experience=True,
                                            stream=True, every=0.01),
                          gpu_usage_metrics(epoch=True, stream=True))
    d = Driver(ev)
    d.train_exp(experience(0, "train"), [[batch(1, 4), batch(1, 4)]])
    last = d.eval(acc_stream([0.5]))
    names = {"Time_MB/train_phase/train_stream/Task000",
             "Time_Epoch/train_phase/train_stream/Task000",
             "RunningTime_Epoch/train_phase/train_stream/Task000",
             "Time_Exp/eval_phase/test_stream/Task000/Exp000",
             "Time_Stream/eval_phase/test_stream/Task000",
             "MaxRAMUsage_MB/train_phase/train_stream/Task000",
             "MaxRAMUsage_Epoch/train_phase/train_stream/Task000",
             "MaxRAMUsage_Experience/eval_phase/test_stream/Task000/Exp000",
             "MaxRAMUsage_Stream/eval_phase/test_stream/Task000"}
    if torch.cuda.is_available():
        names |= {"MaxGPU0Usage_Epoch/train_phase/train_stream/Task000",
                  "MaxGPU0Usage_Stream/eval_phase/test_stream/Task000"}
    assert set(last) == names
    assert all(last[n] >= 0 for n in names)
    assert last["MaxRAMUsage_Stream/eval_phase/test_stream/Task000"] > 1.0  # MB, not bytes


# ---- loggers ------------------------------------------------------------------------------
def test_loggers_write_what_they_say(tmp_path):
    bar, text = io.StringIO(), io.StringIO()
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                          confusion_matrix_metrics(),
                          loggers=[InteractiveLogger(file=bar, every=0.0), TextLogger(text),
                                   CSVLogger(tmp_path / "logs")])
    d = Driver(ev)
    d.train_exp(experience(0, "train"), [[batch(1, 4), batch(2, 4)]])
    d.eval(acc_stream([0.5, 0.3]))

    out = bar.getvalue()
    assert "[" + "#" * 30 + "] 2/2 it" in out  # the bar reached its end: 1 epoch * 2 batches
    assert "Top1_Acc_Epoch/Task000=0.3750" in out
    assert "Top1_Acc_Exp/Task000=0.3000" in out

    lines = text.getvalue().splitlines()
    assert "\tTop1_Acc_Stream/eval_phase/test_stream/Task000 = 0.4000" in lines

    with open(tmp_path / "logs" / "training_results.csv", newline="") as f:
        train_rows = list(csv.reader(f))
    with open(tmp_path / "logs" / "eval_results.csv", newline="") as f:
        eval_rows = list(csv.reader(f))
    assert train_rows == [["metric_name", "x", "value"],
                          ["Top1_Acc_Epoch/train_phase/train_stream/Task000", "2", "0.375"]]
    assert eval_rows[0] == ["metric_name", "x", "value"]
    by_name = {r[0]: r for r in eval_rows[1:]}
    assert float(by_name["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001"][2]) == 0.3
    assert by_name["ConfusionMatrix_Stream/eval_phase/test_stream"][1] == "2"
    assert len(eval_rows) == 1 + 2 + 1 + 1


def test_csv_logger_resumes_at_the_checkpointed_row(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"Loss_Exp/eval_phase/test_stream/Task000/Exp000": 1.0}, 5)
    state = logger.state_dict()
    logger.log_metrics({"Loss_Exp/eval_phase/test_stream/Task000/Exp000": 2.0}, 9)  # lost
    logger.close()
    resumed = CSVLogger(tmp_path)
    resumed.load_state_dict(state)
    resumed.log_metrics({"Loss_Exp/eval_phase/test_stream/Task000/Exp000": 3.0}, 9)
    resumed.close()
    with open(tmp_path / "eval_results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[2] for r in rows[1:]] == ["1.0", "3.0"]


def test_loggers_cost_nothing_per_iteration_unless_they_draw():
    assert "after_training_iteration" not in TextLogger().active_hooks()
    assert "after_training_iteration" not in CSVLogger().active_hooks()
    ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[TextLogger(), CSVLogger()])
    assert "after_training_iteration" not in ev.active_hooks()


# ---- end to end with the real loop ------------------------------------------------------------
def _random_benchmark(n_exp: int = 2, n: int = 24, d: int = 6) -> CLBenchmark:
    g = torch.Generator().manual_seed(0)
    streams: dict[str, list[Experience]] = {"train": [], "test": []}
    for origin in streams:
        for e in range(n_exp):
            classes = [2 * e, 2 * e + 1]
            y = torch.tensor(classes).repeat(n // 2)
            x = torch.randn(n, d, generator=g) + y[:, None].float()
            streams[origin].append(Experience(TensorCLDataset(x, y, 0), e, classes, 0, origin))
    return CLBenchmark(streams["train"], streams["test"], 2 * n_exp, list(range(2 * n_exp)))


def test_end_to_end_with_naive():
    naive = pytest.importorskip("raycl.training").Naive
    torch.manual_seed(0)
    bench = _random_benchmark()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    ev = default_evaluator()
    strategy = naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     train_epochs=2, eval_mb_size=10, evaluator=ev)
    results = []
    for exp in bench.train_stream:
        strategy.train(exp)
        metrics = strategy.eval(bench.test_stream)
        results.append(metrics)
    assert "Top1_Acc_Epoch/train_phase/train_stream/Task000" in metrics
    assert "ExperienceForgetting/eval_phase/test_stream/Task000/Exp000" in metrics
    with torch.no_grad():
        x = torch.cat([e.dataset.x for e in bench.test_stream])
        y = torch.cat([e.dataset.targets for e in bench.test_stream])
        by_hand = (model(x).argmax(dim=1) == y).float().mean().item()
        exp0 = (model(bench.test_stream[0].dataset.x).argmax(1)
                == bench.test_stream[0].dataset.targets).float().mean().item()
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == pytest.approx(by_hand)
    assert metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(exp0)
    R_ = ev.accuracy_matrix()
    assert len(R_) == 2 and not any(math.isnan(v) for row in R_ for v in row)
    assert metrics["StreamForgetting/eval_phase/test_stream"] == pytest.approx(
        R_[0][0] - R_[1][0])
    assert accuracy_matrix_from_metrics(results) == R_


def test_periodic_eval_with_naive_fills_one_row_per_experience():
    naive = pytest.importorskip("raycl.training").Naive
    torch.manual_seed(0)
    bench = _random_benchmark(n_exp=3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
    ev = EvaluationPlugin(accuracy_metrics(experience=True), forgetting_metrics(stream=True))
    strategy = naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     train_epochs=2, eval_mb_size=10, evaluator=ev, eval_every=1)
    strategy.train(bench.train_stream, eval_streams=[bench.test_stream])
    R_ = ev.accuracy_matrix()
    assert len(R_) == 3  # six evaluations (one per epoch), the last of each experience kept
    xs, accs = ev.get_all_metrics()["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001"]
    assert len(xs) == 6 and R_[1][1] == accs[3] and R_[2][1] == accs[5]
    forgetting_now = ((R_[0][0] - R_[2][0]) + (R_[1][1] - R_[2][1])) / 2
    assert ev.get_last_metrics()["StreamForgetting/eval_phase/test_stream"] == \
        pytest.approx(forgetting_now)


def test_loss_matrix_matches_an_explicit_evaluation_with_naive():
    naive = pytest.importorskip("raycl.training").Naive
    torch.manual_seed(0)
    bench = _random_benchmark(n_exp=2)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    ev = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(experience=True))
    # eval minibatches of 10, 10 and 4: the size-weighted mean is the mean over all samples
    strategy = naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     train_epochs=2, eval_mb_size=10, evaluator=ev)
    by_hand = []
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
        with torch.no_grad():
            by_hand.append([nn.functional.cross_entropy(model(e.dataset.x),
                                                        e.dataset.targets).item()
                            for e in bench.test_stream])
    L = ev.loss_matrix()
    assert [[pytest.approx(v, rel=1e-5) for v in row] for row in by_hand] == L
    assert len(L) == len(ev.accuracy_matrix()) == 2 and all(len(row) == 2 for row in L)
    assert L[1][0] != L[0][0]  # rows are different models
