"""EWC vs SI tuned the way A-GEM's paper tunes: on the first tasks only, then reported on the rest.

Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019, sec. 5: the first k tasks
form a stream used only to choose hyperparameters; the learner is then trained from scratch on
the remaining T - k tasks, which no tuning saw, and only those runs are reported.

    python -m raycl.study studies/first_tasks_permuted.py

10 permuted-digits experiences, k = 3: phase 'tune' runs 4 configs per method x 3 seeds on
experiences 0-2 (ranked on their validation data), phase 'final' trains each arm's chosen config
on experiences 3-9 with every seed.
"""

from ray import tune

from raycl.plugins import EWCPlugin, SynapticIntelligencePlugin
from raycl.study import Arm, Benchmark, Optimizer, Study

study = Study(
    name="first_tasks_permuted",
    description="EWC vs SI, tuned on the first 3 of 10 experiences (A-GEM protocol)",
    benchmark=Benchmark("permuted_digits", n_experiences=10),
    optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
    train_epochs=4,
    train_mb_size=32,
    arms=[
        Arm("naive", baseline=True),
        Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"], mode="separate")],
            {"ewc_lambda": tune.loguniform(10.0, 5e3)}),
        # SI's usable range with SGD momentum 0.9 is lr * si_lambda <~ 0.015 (docs/methods.md,
        # "Quadratic penalties"): <= 1 at lr 0.01; every si_lambda >= 1 diverged at lr 0.05
        Arm("si", lambda c: [SynapticIntelligencePlugin(c["si_lambda"])],
            {"si_lambda": tune.loguniform(0.01, 1.0)}),
    ],
    seeds=[0, 1, 2],
    num_samples=4,
    selection="first_tasks",
    tuning_experiences=3,
)
