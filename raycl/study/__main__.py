"""``python -m raycl.study STUDY_FILE [options]``: run a hyperparameter study on Ray Tune.

Exit status: 0 when every trial finished or diverged (a diverged trial is a result of its
hyperparameters, recorded as ERROR with the reason), 1 when some trial failed otherwise or the
run was interrupted (finish it with ``--resume``; 130 after a second Ctrl-C, which does not wait
for the running trials to stop), 2 for a study file that does not validate or a
run that must not start (another run holds the study, results there already, a changed study on
``--resume``, a storage that cannot be used, resources no node has); those print a single
line ``raycl: error: ...`` on stderr before any trial starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raycl.study.plan import PreparedRun

#: How every one-line error of the command starts (the report command's too).
ERROR_PREFIX = "raycl: error: "


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _seed_list(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seeds like 3,4,5 or 'none', got {text}") \
            from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must be distinct seeds >= 0, got {text}")
    return seeds


def parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="python -m raycl.study", allow_abbrev=False,
        description="Run a study of continual-learning strategies as Ray Tune trials and "
                    "write trials/matrix/curves Parquet under STORAGE/<study name>/.")
    p.add_argument("study_file", metavar="STUDY_FILE", help="a study file (studies/*.py)")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster ('auto' on a cluster node); default: "
                        "the cluster in RAY_ADDRESS if set (Ray jobs set it), else a new local "
                        "Ray of this study's own (never one already running on the machine), "
                        "shut down at the end")
    p.add_argument("--storage", default="results", metavar="PATH_OR_URI",
                   help="where results go: a path or a pyarrow URI such as s3://bucket/x "
                        "(default: ./results)")
    p.add_argument("--num-samples", type=_positive_int, default=None, metavar="N",
                   help="configs per arm (overrides the study's num_samples)")
    p.add_argument("--max-concurrent", type=_positive_int, default=None, metavar="N",
                   help="most trials running at once")
    p.add_argument("--gpus-per-trial", type=_non_negative, default=None, metavar="G",
                   help="GPUs per trial, fractions allowed (default: 1 if the cluster has "
                        "GPUs, else 0)")
    p.add_argument("--cpus-per-trial", type=_non_negative, default=None, metavar="C",
                   help="CPUs per trial (default: the study's, 1)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study of the same name: finished trials are "
                        "not rerun and no row is duplicated; refused if the study changed")
    p.add_argument("--allow-changed", action="store_true",
                   help="with --resume: accept a study that only widens the search (more "
                        "num_samples, seeds or confirm_seeds, added arms); never one whose "
                        "trials would compute something else")
    p.add_argument("--smoke", action="store_true",
                   help="one sample per arm, one seed, one epoch, as study '<name>-smoke' in "
                        "STORAGE/smoke/<name>/: a seconds-long check")
    p.add_argument("--dashboard-host", default=None, metavar="HOST",
                   help="start Ray's dashboard with the local Ray, listening on HOST "
                        "(127.0.0.1: this machine only; 0.0.0.0 opens it to the network). "
                        "Default: no dashboard")
    p.add_argument("--trials-per-batch", type=_non_negative_int, default=None, metavar="N",
                   help="run the trials as successive Ray Tune runs of at most N, so the "
                        "driver's memory stays flat on long studies (default: 500, or 20 per "
                        "trial the cluster runs at once if more; 0: one run)")
    p.add_argument("--selection", default=None,
                   choices=("valid", "test", "first_tasks", "first_task", "per_experience"),
                   help="how each arm's config is chosen (overrides the study's; default "
                        "'valid': on the validation stream, reported on test)")
    p.add_argument("--confirm-seeds", type=_seed_list, default=None, metavar="S,S,...",
                   help="rerun each arm's chosen config on these seeds and report those runs "
                        "('none': no confirmation; default: the study's, else 3 fresh seeds)")
    p.add_argument("--pending-timeout", type=_non_negative, default=None, metavar="SECONDS",
                   help="on a cluster where no node can run a trial yet (an autoscaler may "
                        "add one): stop the study after this long without a trial started "
                        "(default: 900)")
    p.add_argument("--tracker", action="append", default=[],
                   choices=("tensorboard", "mlflow", "wandb"),
                   help="also log every trial to an experiment tracker (repeatable): "
                        "TensorBoard event files under STORAGE/<name>/_ray, MLflow (a file "
                        "store STORAGE/<name>/mlruns unless MLFLOW_TRACKING_URI is set), "
                        "Weights & Biases (WANDB_MODE=offline keeps it local)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the --storage path is a file system every node of the cluster "
                        "mounts at the same place (NFS, say); without it a local path is "
                        "refused on a cluster of more than one node")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the study and print the trials that would run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    from raycl.study.loader import StudyError
    from raycl.study.plan import RunError, prepare_run

    if args.allow_changed and not args.resume:
        print(f"{ERROR_PREFIX}--allow-changed: only with --resume", file=sys.stderr)
        return 2
    try:
        prepared = prepare_run(
            args.study_file, storage=args.storage, num_samples=args.num_samples,
            max_concurrent=args.max_concurrent, gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial, resume=args.resume, smoke=args.smoke,
            check_storage=not args.dry_run, selection=args.selection,
            confirm_seeds=args.confirm_seeds, allow_changed=args.allow_changed)
    except (StudyError, RunError) as err:
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return 2
    with prepared:  # the study folder's lock goes with this process, whatever happens
        return _run(args, prepared)


def _run(args: argparse.Namespace, prepared: PreparedRun) -> int:
    """Print the dry run, or run the prepared study; the exit status."""
    from raycl.study.plan import RunError, arm_budget
    from raycl.study.summary import describe, resources_text

    if args.dry_run:
        study = prepared.study
        for line in describe(study, prepared.trials, arm_budget(study), resources_text(study)):
            print(line)
        print(f"results would go to {prepared.store.uri}")
        return 0
    try:
        # The one import that runs upward: this entry point hands the planned run to Ray.
        from raycl.tune.runner import run_study
    except ImportError as err:  # Ray missing: still a one-line error
        print(f"{ERROR_PREFIX}cannot import the Ray Tune layer: {err}", file=sys.stderr)
        return 2
    try:
        extra: dict[str, Any] = ({} if args.pending_timeout is None
                                 else {"pending_timeout_s": args.pending_timeout})
        extra["shared_storage"] = args.shared_storage
        extra["trackers"] = args.tracker
        outcome = run_study(prepared, address=args.address, dashboard_host=args.dashboard_host,
                            trials_per_batch=args.trials_per_batch, **extra)
    except RunError as err:
        print(f"{ERROR_PREFIX}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: quit without waiting for the trials to stop
        print("interrupted: finish the study with the same command and --resume",
              file=sys.stderr)
        return 130
    if outcome.failure:
        print(f"{ERROR_PREFIX}{outcome.failure}", file=sys.stderr)
        return 1
    failed = outcome.errored - outcome.diverged
    return 1 if (failed or outcome.interrupted) else 0


if __name__ == "__main__":
    sys.exit(main())
