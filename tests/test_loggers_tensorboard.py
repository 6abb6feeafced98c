"""TensorboardLogger: a real Naive run on the embedded digits, event files read back by hand.

The reader parses the TFRecord framing (uint64 length, uint32 masked CRC of the length, the
record, uint32 masked CRC of the record) and each record as ``tensorboardX``'s ``Event`` proto,
so the test checks what TensorBoard would read, not what the writer was asked to write.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

pytest.importorskip("tensorboardX")

from tensorboardX.proto.event_pb2 import Event  # noqa: E402

from raycl.benchmarks import SplitDigits  # noqa: E402
from raycl.evaluation import (  # noqa: E402
    EvaluationPlugin,
    TensorboardLogger,
    accuracy_metrics,
    confusion_matrix_metrics,
    loss_metrics,
)
from raycl.models import SimpleMLP  # noqa: E402
from raycl.training import Naive  # noqa: E402


def read_events(folder: Path) -> list[Event]:
    """Every Event record of every event file in ``folder`` (TFRecord framing)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 8 + 4  # length, masked CRC of the length
            record = data[pos:pos + length]
            assert len(record) == length, f"cut record in {path.name}"
            pos += length + 4  # record, masked CRC of the record
            event = Event()
            event.ParseFromString(record)
            events.append(event)
    return events


def scalars(events: list[Event]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalar summaries."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        if event.HasField("summary"):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_logger_writes_every_scalar_with_its_step(tmp_path):
    torch.manual_seed(0)
    bench = SplitDigits(n_experiences=2, seed=0)
    logger = TensorboardLogger(tmp_path / "tb")
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                          loss_metrics(epoch=True), confusion_matrix_metrics(),
                          loggers=[logger])
    emitted: list[tuple[str, int]] = []
    original = logger.log_metrics

    def spy(values, x):
        emitted.extend((name, x) for name in values)
        original(values, x)

    logger.log_metrics = spy  # type: ignore[method-assign]
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=32)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=64,
                     train_epochs=1, eval_mb_size=256, evaluator=ev)
    steps = []
    for exp in bench.train_stream:
        strategy.train(exp)
        steps.append(strategy.clock.train_iterations)
        strategy.eval(bench.test_stream)
    logger.close()

    got = scalars(read_events(tmp_path / "tb"))
    expected = {(name, x) for name, x in emitted if not name.startswith("ConfusionMatrix")}
    assert {(tag, step) for tag, pts in got.items() for step, _ in pts} == expected
    assert not any(tag.startswith("ConfusionMatrix") for tag in got)  # not a scalar: skipped
    stream_acc = got["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert [step for step, _ in stream_acc] == steps  # evaluated after each experience
    assert all(0.0 <= v <= 1.0 for _, v in stream_acc)
    assert "Top1_Acc_Epoch/train_phase/train_stream/Task000" in got
    assert "Loss_Epoch/train_phase/train_stream/Task000" in got
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in got


def test_tensorboard_logger_checks_its_arguments_and_closes(tmp_path):
    with pytest.raises(TypeError, match="tb_log_dir"):
        TensorboardLogger(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tb_log_dir"):
        TensorboardLogger("")
    with pytest.raises(TypeError, match="filename_suffix"):
        TensorboardLogger(tmp_path, filename_suffix=1)  # type: ignore[arg-type]
    logger = TensorboardLogger(tmp_path, filename_suffix=".raycl")
    logger.log_metrics({"a": 1.5, "b": torch.tensor(2.0)}, 7)
    logger.close()
    logger.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_metrics({"a": 1.0}, 8)
    assert scalars(read_events(tmp_path)) == {"a": [(7, 1.5)], "b": [(7, 2.0)]}
    assert all(p.name.endswith(".raycl") for p in tmp_path.glob("events.out.tfevents.*"))


def test_missing_tensorboardx_names_the_extra(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"raycl\[tensorboard\]"):
        TensorboardLogger(tmp_path)
