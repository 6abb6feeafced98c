"""Evaluation: metrics as pure functions, metrics as plugins, the evaluator and loggers.

* :mod:`raycl.evaluation.functional`: ACC, forgetting, BWT and FWT of an accuracy matrix.
* ``*_metrics`` factories: plugin metrics named exactly as Avalanche names them
  (``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001`` ...).
* :class:`EvaluationPlugin` and :func:`default_evaluator`: what a strategy reports.
* Loggers: :class:`InteractiveLogger`, :class:`TextLogger`, :class:`CSVLogger`,
  :class:`TensorboardLogger` (needs the ``tensorboard`` extra).

Importing this package imports torch and numpy only (no pandas, no matplotlib).
"""

from raycl.evaluation import functional
from raycl.evaluation.functional import (
    accuracy_matrix_from_metrics,
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting,
    forward_transfer,
)
from raycl.evaluation.loggers import (
    BaseLogger,
    CSVLogger,
    InteractiveLogger,
    TensorboardLogger,
    TextLogger,
)
from raycl.evaluation.metric_base import (
    ExperienceResult,
    MetricResult,
    PluginMetric,
    TrainingProgress,
)
from raycl.evaluation.metrics import (
    AccuracyMetric,
    ConfusionMatrixMetric,
    LossMetric,
    accuracy_metrics,
    confusion_matrix_metrics,
    loss_metrics,
)
from raycl.evaluation.plugin import EvaluationPlugin, default_evaluator
from raycl.evaluation.resources import (
    GPUUsageMetric,
    RAMUsageMetric,
    TimingMetric,
    gpu_usage_metrics,
    ram_usage_metrics,
    timing_metrics,
)
from raycl.evaluation.transfer import (
    BWTMetric,
    ForgettingMetric,
    ForwardTransferMetric,
    bwt_metrics,
    forgetting_metrics,
    forward_transfer_metrics,
)

__all__ = [
    "AccuracyMetric",
    "BWTMetric",
    "BaseLogger",
    "CSVLogger",
    "ConfusionMatrixMetric",
    "EvaluationPlugin",
    "ExperienceResult",
    "ForgettingMetric",
    "ForwardTransferMetric",
    "GPUUsageMetric",
    "InteractiveLogger",
    "LossMetric",
    "MetricResult",
    "PluginMetric",
    "RAMUsageMetric",
    "TensorboardLogger",
    "TextLogger",
    "TimingMetric",
    "TrainingProgress",
    "accuracy_matrix_from_metrics",
    "accuracy_metrics",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "bwt_metrics",
    "confusion_matrix_metrics",
    "default_evaluator",
    "forgetting",
    "forgetting_metrics",
    "forward_transfer",
    "forward_transfer_metrics",
    "functional",
    "gpu_usage_metrics",
    "loss_metrics",
    "ram_usage_metrics",
    "timing_metrics",
]
