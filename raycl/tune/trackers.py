"""Experiment trackers for ``--tracker``: Ray Tune's own logger callbacks.

Each trial logs one step per experience (Tune's ``training_iteration``: one report per
experience) with every metric the trial reports, and its config as parameters
(``trial/arm``, ``trial/seed``, ``trial/params/<name>``, ...). A study file can also list any
Tune callback in ``Study(callbacks=[...])``.

* ``tensorboard``: ``ray.tune.logger.TBXLoggerCallback`` (needs tensorboardX: the
  ``tensorboard`` extra). Event files go to each trial's folder under ``<storage>/<study>/_ray/``:
  ``tensorboard --logdir <storage>/<study>/_ray``.
* ``mlflow``: ``ray.air.integrations.mlflow.MLflowLoggerCallback``, one MLflow run per trial in
  the experiment named after the study, tracked at ``MLFLOW_TRACKING_URI`` if set, else in a
  local file store ``<storage>/<study>/mlruns`` (local storage only). Needs ``mlflow``.
* ``wandb``: ``ray.air.integrations.wandb.WandbLoggerCallback``, project named after the study;
  ``WANDB_MODE=offline`` keeps it on this machine. Needs ``wandb``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from raycl.study.plan import RunError
from raycl.study.results import ResultStore

__all__ = ["TRACKERS", "tracker_callbacks"]

#: ``--tracker`` choices and the package each needs.
TRACKERS = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
#: What to install for each.
_INSTALL = {"tensorboard": "'raycl[tensorboard]'", "mlflow": "mlflow", "wandb": "wandb"}


def tracker_callbacks(names: list[str], study_name: str, store: ResultStore) -> list[Any]:
    """The Tune callbacks of the ``--tracker`` names; :class:`RunError` (one line) for an
    unknown tracker or a missing package."""
    callbacks = []
    for name in dict.fromkeys(names):  # each once
        if name not in TRACKERS:
            raise RunError(f"--tracker {name}: unknown; choose one of {', '.join(TRACKERS)}")
        package = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise RunError(f"--tracker {name}: needs the {package} package "
                           f"(pip install {_INSTALL[name]})")
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if uri is None:
                if "://" in store.uri:
                    raise RunError("--tracker mlflow: set MLFLOW_TRACKING_URI (the default, "
                                   "a file store beside the results, needs a local --storage)")
                uri = f"file://{store.uri}/mlruns"
            callbacks.append(MLflowLoggerCallback(tracking_uri=uri,
                                                  experiment_name=study_name))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=study_name))
    return callbacks
