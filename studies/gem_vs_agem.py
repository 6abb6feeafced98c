"""GEM vs A-GEM (and naive fine-tuning) on class-incremental split digits, at matched memory.

    python -m raycl.study studies/gem_vs_agem.py

Memory methods are compared at the same memory budget: each method gets one arm per
``patterns_per_experience`` value (``gem_m16``, ``agem_m16``, ...), so a method is never chosen
at a larger memory than the one it is compared with. Within an arm, GEM searches
memory_strength and A-GEM sample_size (the reference-gradient sample); the chosen configs and
paired comparisons are per arm, and ``param_patterns_per_experience`` groups them in the
results. RAYCL_BENCHMARK=split_mnist (or split_cifar10, ...) switches the benchmark;
MNIST/CIFAR files are read from RAYCL_DATA.
"""

import os

from ray import tune

from raycl.plugins import AGEMPlugin, GEMPlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

BENCHMARK = os.environ.get("RAYCL_BENCHMARK", "split_digits")
MEMORY = (16, 32, 64)  # patterns per experience: the budgets compared


def gem(c):
    return [GEMPlugin(patterns_per_experience=c["patterns_per_experience"],
                      memory_strength=c["memory_strength"])]


def agem(c):
    return [AGEMPlugin(patterns_per_experience=c["patterns_per_experience"],
                       sample_size=c["sample_size"])]


study = Study(
    name="gem_vs_agem",
    description="GEM vs A-GEM at matched memory (16, 32, 64 patterns per experience)",
    benchmark=Benchmark(BENCHMARK, n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.05, momentum=0.0),
    # the digits are tiny: several epochs; MNIST/CIFAR: one pass per experience
    train_epochs=3 if BENCHMARK.endswith("_digits") else 1,
    arms=[
        Arm("naive", baseline=True),
        *[Arm(f"gem_m{m}", gem, {"patterns_per_experience": m,
                                  "memory_strength": tune.uniform(0.0, 1.0)}) for m in MEMORY],
        *[Arm(f"agem_m{m}", agem, {"patterns_per_experience": m,
                                    "sample_size": tune.choice([32, 64, 128])})
          for m in MEMORY],
    ],
    seeds=[0, 1, 2],
    num_samples=3,
)
