"""EWC vs online EWC vs Synaptic Intelligence, with naive fine-tuning as the baseline.

The default study: on the embedded digits (permuted, 5 domain-incremental experiences) it runs
in a minute or two on a 2-core laptop, Ray start-up included:

    python -m raycl.study studies/ewc_vs_si.py

Configs are chosen on the validation stream (10% of each training experience, held out) and
reported on the test stream: 39 search trials (naive once per seed, then 4 configs per method x
3 seeds, searching ewc_lambda (log-uniform), decay_factor (online EWC) and si_lambda
(log-uniform)), then each arm's chosen config on 3 fresh seeds (12 confirmation trials), whose
test accuracy is the reported figure.

Another benchmark: RAYCL_BENCHMARK=split_mnist (or permuted_mnist, split_cifar10, ...) reads
MNIST/CIFAR from RAYCL_DATA (see raycl.benchmarks); the model follows the data ('auto').
The variable is read once, on the driver: every trial gets the driver's settings.
"""

import os

from ray import tune

from raycl.plugins import EWCPlugin, SynapticIntelligencePlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

BENCHMARK = os.environ.get("RAYCL_BENCHMARK", "permuted_digits")

study = Study(
    name="ewc_vs_si",
    description="EWC vs online EWC vs SI (naive baseline)",
    benchmark=Benchmark(BENCHMARK, n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
    # the digits are tiny: several epochs; MNIST/CIFAR: one pass per experience
    train_epochs=8 if BENCHMARK.endswith("_digits") else 1,
    train_mb_size=32,
    arms=[
        Arm("naive", baseline=True),
        Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"], mode="separate")],
            {"ewc_lambda": tune.loguniform(10.0, 5e3)}),
        Arm("online_ewc",
            lambda c: [EWCPlugin(c["ewc_lambda"], mode="online",
                                 decay_factor=c["decay_factor"])],
            {"ewc_lambda": tune.loguniform(10.0, 5e3),
             "decay_factor": tune.uniform(0.5, 1.0)}),
        # SI's usable range with SGD momentum 0.9 is lr * si_lambda <~ 0.015 (docs/methods.md,
        # "Quadratic penalties"): <= 1 at lr 0.01; every si_lambda >= 1 diverged at lr 0.05
        Arm("si", lambda c: [SynapticIntelligencePlugin(c["si_lambda"])],
            {"si_lambda": tune.loguniform(0.01, 1.0)}),
    ],
    seeds=[0, 1, 2],
    num_samples=4,
    metric="final_avg_accuracy",
    mode="max",
    selection="valid",  # the default, spelled out: choose on validation, report on test
)
