"""GEM vs A-GEM (and naive fine-tuning) on class-incremental split digits.

    python -m raycl.study studies/gem_vs_agem.py

GEM searches memory_strength and patterns_per_experience; A-GEM patterns_per_experience and
sample_size (the reference-gradient sample). RAYCL_BENCHMARK=split_mnist (or split_cifar10, ...)
switches the benchmark; MNIST/CIFAR files are read from RAYCL_DATA.
"""

import os

from ray import tune

from raycl.plugins import AGEMPlugin, GEMPlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

BENCHMARK = os.environ.get("RAYCL_BENCHMARK", "split_digits")

study = Study(
    name="gem_vs_agem",
    description="GEM vs A-GEM on memory size and strength",
    benchmark=Benchmark(BENCHMARK, n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.05, momentum=0.0),
    # the digits are tiny: several epochs; MNIST/CIFAR: one pass per experience
    train_epochs=3 if BENCHMARK.endswith("_digits") else 1,
    arms=[
        Arm("naive", baseline=True),
        Arm("gem",
            lambda c: [GEMPlugin(patterns_per_experience=c["patterns_per_experience"],
                                 memory_strength=c["memory_strength"])],
            {"patterns_per_experience": tune.choice([16, 32, 64]),
             "memory_strength": tune.uniform(0.0, 1.0)}),
        Arm("agem",
            lambda c: [AGEMPlugin(patterns_per_experience=c["patterns_per_experience"],
                                  sample_size=c["sample_size"])],
            {"patterns_per_experience": tune.choice([16, 32, 64]),
             "sample_size": tune.choice([32, 64, 128])}),
    ],
    seeds=[0, 1, 2],
    num_samples=4,
)
