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
  local file store ``<storage>/<study>/mlruns`` (local storage only; MLflow >= 3.7 keeps that
  store in maintenance mode, raycl opts in with ``MLFLOW_ALLOW_FILE_STORE=true``; a database
  such as ``MLFLOW_TRACKING_URI=sqlite:///mlflow.db`` needs the full ``mlflow`` package).
  The store is opened before any trial runs. Needs ``mlflow`` (or ``mlflow-skinny``).
* ``wandb``: ``ray.air.integrations.wandb.WandbLoggerCallback``, project named after the study;
  ``WANDB_MODE=offline`` keeps it on this machine (runs under ``WANDB_DIR``, else each trial's
  folder); the driver's ``WANDB_MODE`` and ``WANDB_DIR`` apply to the loggers. Needs ``wandb``.
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
_INSTALL = {name: f"'raycl[{name}]'" for name in TRACKERS}


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
                # MLflow >= 3.7 refuses its file store unless asked (it is in maintenance
                # mode): the local default is ours to choose, a database URI is the user's.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            _check_mlflow(uri, study_name)
            callbacks.append(MLflowLoggerCallback(tracking_uri=uri,
                                                  experiment_name=study_name))
        else:
            from ray.air.integrations.wandb import WandbLoggerCallback

            # The loggers run in Ray actors, which do not see the driver's environment:
            # WANDB_MODE (offline keeps runs on the machine) and WANDB_DIR go as init args.
            init = {key: os.environ[var] for key, var in (("mode", "WANDB_MODE"),
                                                          ("dir", "WANDB_DIR"))
                    if os.environ.get(var)}
            # silent: W&B's banner and run summary would come through Ray's log forwarding
            # into the study's console, once per trial.
            # reinit: what Ray's boolean True meant, without W&B's deprecation warning.
            callbacks.append(WandbLoggerCallback(project=study_name, reinit="finish_previous",
                                                 settings={"silent": True}, **init))
    return callbacks


def _check_mlflow(uri: str, experiment: str) -> None:
    """Open the MLflow store before any trial runs: a store MLflow cannot open or reach would
    otherwise fail inside Tune's setup with a long traceback."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as error:  # MlflowException, connection errors: all one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RunError(f"--tracker mlflow: {uri}: {type(error).__name__}: {first}") from None
