"""Riemannian Walk: a sweep over its three hyperparameters, with naive fine-tuning as baseline.

    python -m raycl.study studies/rwalk_sweep.py

Searches ewc_lambda (log-uniform), ewc_alpha (the weight of the newest squared gradient in the
Fisher moving average) and delta_t (iterations between path-integral score updates) on the
permuted digits. RAYCL_BENCHMARK=split_mnist (or any name of raycl.study.BENCHMARKS) switches
the benchmark; MNIST/CIFAR files are read from RAYCL_DATA.
"""

import os

from ray import tune

from raycl.plugins import RWalkPlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

BENCHMARK = os.environ.get("RAYCL_BENCHMARK", "permuted_digits")

study = Study(
    name="rwalk_sweep",
    description="RWalk: ewc_lambda x ewc_alpha x delta_t",
    benchmark=Benchmark(BENCHMARK, n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
    # the digits are tiny: several epochs; MNIST/CIFAR: one pass per experience
    train_epochs=3 if BENCHMARK.endswith("_digits") else 1,
    arms=[
        Arm("naive", baseline=True),
        Arm("rwalk",
            lambda c: [RWalkPlugin(ewc_lambda=c["ewc_lambda"], ewc_alpha=c["ewc_alpha"],
                                   delta_t=c["delta_t"])],
            {"ewc_lambda": tune.loguniform(0.1, 300.0),
             "ewc_alpha": tune.uniform(0.5, 0.99),
             "delta_t": tune.choice([5, 10, 20])}),
    ],
    seeds=[0, 1, 2],
    num_samples=8,
)
