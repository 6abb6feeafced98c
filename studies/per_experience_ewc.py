"""EWC and SI with the continual hyperparameter framework of De Lange et al. (TPAMI 2021).

"A continual learning survey: Defying forgetting in classification tasks", sec. 4: per
experience, with that experience's data only, (1) fine-tune the previous model over a
learning-rate grid and keep the best validation accuracy A*; (2) train with the method's
stability hyperparameter set high, halving it until the new experience's validation accuracy
reaches 0.8 A*; continue from that model.

    python -m raycl.study studies/per_experience_ewc.py

Every candidate is a Ray Tune trial of one experience that continues the chosen learner of the
experience before; every candidate and every choice is in trials.parquet (phases 'plasticity'
and 'stability'), each arm's per-experience choices in selection.parquet.
"""

from raycl.plugins import EWCPlugin, SynapticIntelligencePlugin
from raycl.study import Arm, Benchmark, Optimizer, PerExperience, Study

study = Study(
    name="per_experience_ewc",
    description="EWC and SI, hyperparameters set per experience (De Lange et al. 2021)",
    benchmark=Benchmark("permuted_digits", n_experiences=5),
    optimizer=Optimizer("sgd", lr=0.01, momentum=0.9),
    train_epochs=4,
    train_mb_size=32,
    arms=[
        Arm("naive", baseline=True),
        Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"], mode="separate")],
            stability="ewc_lambda", stability_start=1e4),
        # the lr grid reaches 0.05, where every si_lambda >= 1 diverged (docs/methods.md,
        # "Quadratic penalties"): start at the top of the range that trains there
        Arm("si", lambda c: [SynapticIntelligencePlugin(c["si_lambda"])],
            stability="si_lambda", stability_start=0.3),
    ],
    seeds=[0, 1, 2],
    selection="per_experience",
    per_experience=PerExperience(lr_grid=[0.05, 0.01, 0.002], alpha=0.5, p=0.2),
)
