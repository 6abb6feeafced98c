"""The Ray Tune function trainable: :func:`raycl.study.trial.run_trial` inside a trial process.

What it adds to ``run_trial``: it loads the study in the trial process (from the study file's
text, which travels with the trial, so worker nodes need no copy of the file), picks the device,
turns every ``report(metrics, state)`` into ``tune.report(metrics, checkpoint=...)`` with the
state saved by ``torch.save``, and restarts from ``tune.get_checkpoint()`` after a failure.
Trial processes are reused between trials (``reuse_actors``); ``run_trial`` reseeds every
generator at the start of each trial, and the loaded study and benchmark are cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

__all__ = ["STATE_FILE", "trial_device", "trainable"]

#: File name of the state inside each Tune checkpoint directory.
STATE_FILE = "state.pt"

_STUDIES: dict[str, Any] = {}


def _study(ref: dict[str, Any]) -> Any:
    """The study of ``ref`` (file text + driver settings), loaded once per process."""
    from raycl.study.loader import load_study_source
    from raycl.study.plan import apply_settings

    key = hashlib.sha1(json.dumps([ref["filename"], ref["source"], ref["settings"]],
                                  sort_keys=True, default=str).encode()).hexdigest()
    if key not in _STUDIES:
        study = load_study_source(ref["filename"], ref["source"], validate=False)
        _STUDIES[key] = apply_settings(study, ref["settings"])
    return _STUDIES[key]


def trial_device(use_gpu: bool) -> tuple[str, dict[str, Any]]:
    """The device a trial trains on, and what it records about it.

    A CPU trial hides every GPU from itself first (Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES``
    alone for trials that ask for no GPU). A GPU trial uses ``cuda`` (Ray made the granted GPUs
    the only visible ones) unless torch sees no CUDA device, in which case it falls back to the
    CPU and says so in ``device_note``.
    """
    import ray

    info: dict[str, Any] = {"node_ip": ray.util.get_node_ip_address()}
    if not use_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA
        info.update(device="cpu", gpu_ids="")
        return "cpu", info
    import torch

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    info["gpu_ids"] = ids
    if torch.cuda.is_available():
        info["device"] = "cuda"
        return "cuda", info
    note = f"granted GPU(s) {ids or '?'} but torch sees no CUDA device: trained on the CPU"
    print(f"raycl: warning: {note}", file=sys.stderr)
    info.update(device="cpu", device_note=note)
    return "cpu", info


def trainable(config: dict[str, Any], ref: dict[str, Any]) -> None:
    """Run one trial (``config["trial"]``) of the study described by ``ref``."""
    # Ray logs every checkpoint at INFO level from the trial process: one line per experience.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    device, info = trial_device(bool(ref["use_gpu"]))
    import torch

    from raycl.study.trial import deserialize_state, run_trial, serialize_state

    torch.set_num_threads(max(1, int(ref.get("cpus_per_trial") or 1)))
    study = _study(ref)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = deserialize_state(Path(folder, STATE_FILE).read_bytes())

    def report(metrics: dict[str, Any], state_out: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="raycl-ckpt-") as folder:
            Path(folder, STATE_FILE).write_bytes(serialize_state(state_out))
            # Copied to the trial's storage before report returns: the temp dir may go.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    run_trial(study, config["trial"], report, state, device=device, info=info)
