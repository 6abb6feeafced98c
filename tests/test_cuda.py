"""CUDA checks: skipped without a GPU, run on a machine that has one.

Each plugin trains on the GPU with its state on the strategy's device, a run checkpointed on the
GPU resumes exactly (CUDA RNG included), and the study trial runner records the device it used.
"""

from __future__ import annotations

import io

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from raycl.benchmarks import SplitDigits  # noqa: E402
from raycl.evaluation import EvaluationPlugin, accuracy_metrics  # noqa: E402
from raycl.models import MultiHeadMLP, SimpleMLP  # noqa: E402
from raycl.plugins import (  # noqa: E402
    AGEMPlugin,
    CWRStarPlugin,
    EWCPlugin,
    GDumbPlugin,
    GEMPlugin,
    LwFPlugin,
    ReplayPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
)
from raycl.training import Naive  # noqa: E402


def _strategy(model, plugins, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True))
    return Naive(model, opt, train_mb_size=32, train_epochs=2, eval_mb_size=256,
                 device="cuda", plugins=plugins, evaluator=ev)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


PLUGINS = {
    "ewc": lambda m: [EWCPlugin(100.0)],
    "online_ewc": lambda m: [EWCPlugin(100.0, mode="online", decay_factor=0.9)],
    "si": lambda m: [SynapticIntelligencePlugin(0.3)],
    "rwalk": lambda m: [RWalkPlugin(10.0)],
    "lwf": lambda m: [LwFPlugin()],
    "replay": lambda m: [ReplayPlugin(100)],
    "gdumb": lambda m: [GDumbPlugin(100)],
    "gem": lambda m: [GEMPlugin(20, 0.5)],
    "agem": lambda m: [AGEMPlugin(20, 20)],
    "cwr": lambda m: [CWRStarPlugin(m)],
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_trains_on_cuda_with_state_on_the_device(name):
    bench = SplitDigits(n_experiences=5, seed=0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=64, drop_rate=0)
    strategy = _strategy(model, PLUGINS[name](model))
    for exp in bench.train_stream[:3]:
        strategy.train(exp)
    metrics = strategy.eval(bench.test_stream[:3])
    assert 0.0 <= metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] <= 1.0
    for key, state in strategy.state_dict()["plugins"].items():
        devices = {t.device.type for t in _tensors(state) if t.is_floating_point()}
        # learned tensors live with the model (CWR* keeps small counters on the CPU is fine)
        assert "cuda" in devices or not devices or key.startswith("CWR"), (key, devices)


def test_resume_on_cuda_equals_uninterrupted_run():
    bench = SplitDigits(n_experiences=5, return_task_id=True, seed=0)

    def run(stop_after=None):
        torch.manual_seed(0)  # the model's initial weights
        strategy = _strategy(MultiHeadMLP(input_size=64, hidden_size=32, hidden_layers=1,
                                          drop_rate=0.2), [SynapticIntelligencePlugin(0.3)])
        for i, exp in enumerate(bench.train_stream[:3]):
            strategy.train(exp)
            metrics = strategy.eval(bench.test_stream[:3])
            if i == stop_after:
                buf = io.BytesIO()
                torch.save(strategy.state_dict(), buf)
                buf.seek(0)
                strategy = _strategy(MultiHeadMLP(input_size=64, hidden_size=32,
                                                  hidden_layers=1, drop_rate=0.2),
                                     [SynapticIntelligencePlugin(0.3)], seed=99)
                torch.cuda.manual_seed_all(1234)
                strategy.load_state_dict(torch.load(buf, weights_only=True))
        return metrics, {k: v.cpu() for k, v in strategy.model.state_dict().items()}

    full, resumed = run(), run(stop_after=1)
    assert full[0] == resumed[0]
    for k in full[1]:
        assert torch.equal(full[1][k], resumed[1][k]), k


def test_study_trial_runs_on_cuda_and_records_it(tmp_path):
    from study_files import TINY, write_study

    from raycl.study import load_study, make_trial, run_trial

    study = load_study(write_study(tmp_path, TINY))
    reports = []
    run_trial(study, make_trial("naive", {}, seed=0), lambda m, s: reports.append(m),
              device="cuda", info={"device": "cuda", "gpu_ids": "0"})
    assert reports and reports[-1]["device"] == "cuda"
    assert 0.0 <= reports[-1]["test_final_avg_accuracy"] <= 1.0
