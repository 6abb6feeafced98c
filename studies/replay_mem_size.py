"""Experience replay: how accuracy grows with the memory size, for two storage policies.

    python -m raycl.study studies/replay_mem_size.py

A grid study: every mem_size x storage policy once per seed, against naive fine-tuning, on
class-incremental split digits. RAYCL_BENCHMARK=split_mnist (or split_cifar10, ...) switches the
benchmark; MNIST/CIFAR files are read from RAYCL_DATA.
"""

import os

from ray import tune

from raycl.plugins import ClassBalancedStoragePolicy, ExperienceBalancedStoragePolicy, ReplayPlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

BENCHMARK = os.environ.get("RAYCL_BENCHMARK", "split_digits")

POLICIES = {"experience_balanced": ExperienceBalancedStoragePolicy,
            "class_balanced": ClassBalancedStoragePolicy}


def replay(config):
    """A replay plugin whose memory is filled by the configured storage policy."""
    policy = POLICIES[config["storage_policy"]]({}, config["mem_size"])
    return [ReplayPlugin(mem_size=config["mem_size"], storage_policy=policy)]


study = Study(
    name="replay_mem_size",
    description="Replay: memory size x storage policy",
    benchmark=Benchmark(BENCHMARK, n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.05, momentum=0.9),
    # the digits are tiny: several epochs; MNIST/CIFAR: one pass per experience
    train_epochs=3 if BENCHMARK.endswith("_digits") else 1,
    arms=[
        Arm("naive", baseline=True),
        Arm("replay", replay,
            {"mem_size": tune.grid_search([25, 50, 100, 200, 400]),
             "storage_policy": tune.grid_search(["experience_balanced", "class_balanced"])}),
    ],
    search="grid",
    seeds=[0, 1, 2],
)
