"""Every name a study's results use: the Parquet tables' columns and the metrics trials report.

This module is the one place those names are spelled. The trial runner builds its reports with
it, the result store lays out its tables with it, and the analysis, the report and the notebooks
read the tables through it. It imports nothing but the standard library.

Tables (``<storage>/<study name>/``):

* ``trials.parquet``: one row per trial, :data:`TRIAL_HEAD`, one ``param_<name>`` column per
  searched parameter (:func:`param_column`), :data:`TRIAL_TAIL`.
* ``matrix.parquet``: the accuracy matrix in long form, one row per (trial, trained experience,
  evaluated experience): :data:`MATRIX_COLUMNS`.
* ``curves.parquet``: one row per (trial, experience reported): :data:`CURVE_ID_COLUMNS`, the
  reported metrics (:data:`CURVE_METRICS`, then the per-experience columns), ``schema_version``.
"""

from __future__ import annotations

import re

__all__ = [
    "ACCURACY",
    "ARM",
    "AVG_ACCURACY",
    "AVG_FORGETTING",
    "BWT",
    "CHECKPOINT",
    "CHOSEN_CONFIG",
    "COMPARISONS_TABLE",
    "CONFIG",
    "CONFIGS_SEARCHED",
    "CONFIGS_UNRANKED",
    "CONFIG_KEY",
    "CONFIRM",
    "CONFIRM_MEAN",
    "CONFIRM_N",
    "CONFIRM_STD",
    "COST_METRICS",
    "CURVE_ID_COLUMNS",
    "CURVE_METRICS",
    "DEVICE",
    "DIVERGED",
    "ERROR",
    "ERRORED",
    "EVAL_EXP",
    "EVAL_TIME_S",
    "EXPERIENCE",
    "EXPERIENCES_DONE",
    "FINAL",
    "FINAL_AVG_ACCURACY",
    "FINAL_METRICS",
    "FINISHED_AT",
    "FWT",
    "GPU_IDS",
    "INFO_FIELDS",
    "INTERVAL",
    "INTRANSIGENCE",
    "INT_COLUMNS",
    "LOSS",
    "MATRIX_COLUMNS",
    "NODE_ID",
    "NODE_IP",
    "PARAM_PREFIX",
    "PEAK_MEMORY_MB",
    "PER_EXPERIENCE_METRICS",
    "PHASE",
    "PLUGIN_SPEC",
    "PHASES",
    "PLASTICITY",
    "PROTOCOL",
    "REPORTED_HIGH",
    "REPORTED_LOW",
    "REPORTED_MEAN",
    "REPORTED_METRIC",
    "REPORTED_N",
    "REPORTED_PHASE",
    "REPORTED_SEEDS",
    "REPORTED_STD",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_COLUMN",
    "SEARCH",
    "SEARCH_SEEDS",
    "SEARCH_TEST_MEAN",
    "SEARCH_TEST_STD",
    "SEED",
    "SELECTION_HEAD",
    "SELECTION_METRIC",
    "SELECTION_SPLIT",
    "SELECTION_TABLE",
    "SELECTION_TAIL",
    "SELECTION_VALUE",
    "SPLIT",
    "SPLITS",
    "SPLIT_METRICS",
    "STABILITY",
    "STARTED_AT",
    "STATUS",
    "STREAM_ACCURACY",
    "STREAM_LOSS",
    "STR_COLUMNS",
    "STUDY",
    "TABLES",
    "TERMINATED",
    "TEST",
    "TIME_COLUMNS",
    "TRAINED_EXP",
    "TRAINING_ITERATION",
    "TRAIN_TIME_S",
    "TRIAL_COLUMNS",
    "TRIAL_HEAD",
    "TRIAL_ID",
    "TRIAL_KEY",
    "TRIAL_METRICS",
    "TRIAL_TAIL",
    "TUNE",
    "VALID",
    "VERDICT",
    "accuracy_column",
    "experience_column",
    "is_param_column",
    "is_produced_metric",
    "is_split_metric",
    "loss_column",
    "metric_column",
    "param_column",
    "param_name",
    "reported_every_experience",
    "split_column",
]

#: Version of the tables' layout; bumped when a column changes meaning or type. Version 2: every
#: accuracy metric exists once per split (``valid_*`` / ``test_*``), the matrix has a ``split``
#: column, and every table a ``phase`` column (see :data:`PHASES`). A nullable column added later
#: (:data:`NODE_ID`) needs no bump: readers see it null in older files.
SCHEMA_VERSION = 2
#: The column that holds :data:`SCHEMA_VERSION` in every table.
SCHEMA_VERSION_COLUMN = "schema_version"

#: The three tables of a study folder, each stored as ``<name>.parquet``.
TABLES: tuple[str, ...] = ("trials", "matrix", "curves")

# ---- identity columns (every table starts with them) --------------------------------------------
STUDY = "study"
TRIAL_ID = "trial_id"
"""Ray Tune's id of the trial in the run that produced the row (changes when a trial reruns)."""
TRIAL_KEY = "trial_key"
"""raycl's stable id of (arm, params, seed): the same in every run of the same study."""
ARM = "arm"
SEED = "seed"
PHASE = "phase"
"""Which step of the study's selection protocol ran the trial (one of :data:`PHASES`)."""
CONFIG_KEY = "config_key"
"""Stable id of (arm, config) without the seed: ``groupby([ARM, CONFIG_KEY])`` gives a config's
seeds (the ``param_<name>`` columns hold NaN for other arms' parameters)."""
#: The columns identifying a trial, first in every table.
TRIAL_HEAD: tuple[str, ...] = (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, CONFIG_KEY, SEED)

# ---- protocol phases -----------------------------------------------------------------------------
SEARCH = "search"
"""Configs searched on the whole stream ('valid' and 'test' selection)."""
CONFIRM = "confirm"
"""Each arm's chosen config rerun on seeds no selection saw."""
TUNE = "tune"
"""Configs searched on the first experiences only ('first_tasks', 'first_task')."""
FINAL = "final"
"""Each arm's chosen config trained from scratch for the reported figures ('first_tasks',
'first_task')."""
PLASTICITY = "plasticity"
"""'per_experience': fine-tuning candidates over the learning-rate grid, one experience each."""
STABILITY = "stability"
"""'per_experience': candidates of the decayed stability parameter, one experience each."""
#: Every phase, in the order a study can run them.
PHASES: tuple[str, ...] = (SEARCH, TUNE, PLASTICITY, STABILITY, FINAL, CONFIRM)

# ---- splits --------------------------------------------------------------------------------------
VALID = "valid"
"""The validation split: held out of each training experience, used to choose configs."""
TEST = "test"
"""The test stream: what reported figures are measured on."""
SPLITS: tuple[str, ...] = (VALID, TEST)
SPLIT = "split"
"""The matrix column that says which split a row was measured on."""

# ---- metrics a trial reports ---------------------------------------------------------------------
EXPERIENCE = "experience"
"""Index of the experience just trained, in every report of an experience."""
FINAL_AVG_ACCURACY = "final_avg_accuracy"
"""Mean accuracy over every experience after the last one: the default ranking metric."""
AVG_FORGETTING = "avg_forgetting"
BWT = "bwt"
FWT = "fwt"
#: Metrics reported once, with the last experience (definitions: ``raycl.evaluation.functional``).
FINAL_METRICS: tuple[str, ...] = (FINAL_AVG_ACCURACY, AVG_FORGETTING, BWT, FWT)
AVG_ACCURACY = "avg_accuracy"
"""Mean accuracy over the experiences seen so far."""
STREAM_ACCURACY = "stream_accuracy"
STREAM_LOSS = "stream_loss"
TRAIN_TIME_S = "train_time_s"
EVAL_TIME_S = "eval_time_s"
PEAK_MEMORY_MB = "peak_memory_mb"
#: Numeric metrics reported after every experience (plus the per-experience columns below).
PER_EXPERIENCE_METRICS: tuple[str, ...] = (AVG_ACCURACY, STREAM_ACCURACY, STREAM_LOSS,
                                           TRAIN_TIME_S, EVAL_TIME_S, PEAK_MEMORY_MB)
#: What a trial records about where it ran (strings; notes only when something happened).
PLUGIN_SPEC = "plugin_spec"
"""The trial's plugins as built, every keyword with its value, defaults included
(``raycl.plugins.plugin_spec``, joined by ``; ``)."""
DEVICE = "device"
"""What the trial trained on: ``cuda`` or ``cpu`` (``cpu`` also when Ray granted a GPU that torch
cannot see, e.g. a fake GPU of a test cluster: then ``device_note`` says so)."""
GPU_IDS = "gpu_ids"
"""The GPU ids Ray granted the trial, comma-separated, as ``ray.get_gpu_ids()`` gives them (ids on
the trial's node: ``(node_id, gpu_ids)`` names a GPU of the cluster); null for a CPU trial."""
NODE_IP = "node_ip"
"""The IP address of the node the trial ran on (nodes of one machine share it)."""
NODE_ID = "node_id"
"""Ray's id of the node the trial ran on (``ray.get_runtime_context().get_node_id()``); a trial
restarted on another node after a failure records the new node from then on. Null in tables
written before it existed."""
INFO_FIELDS: tuple[str, ...] = (DEVICE, GPU_IDS, NODE_IP, NODE_ID, "device_note",
                                "checkpoint_note", PLUGIN_SPEC)
#: Key of the report a diverged trial ends with (its value says why); that report has no
#: :data:`EXPERIENCE`, only NaN metrics, and no checkpoint.
DIVERGED = "diverged"

#: Metrics measured on a split: each is reported and stored once per split, as
#: :func:`split_column` names it (``valid_final_avg_accuracy``, ``test_final_avg_accuracy``).
SPLIT_METRICS: tuple[str, ...] = (AVG_ACCURACY, STREAM_ACCURACY, STREAM_LOSS, *FINAL_METRICS)
#: Metrics of the run itself (no split).
COST_METRICS: tuple[str, ...] = (TRAIN_TIME_S, EVAL_TIME_S, PEAK_MEMORY_MB)

_ACC_PREFIX, _LOSS_PREFIX = "acc_exp_", "loss_exp_"
_PER_EXP = re.compile(rf"^(?:({VALID}|{TEST})_)?({_ACC_PREFIX}|{_LOSS_PREFIX})(\d{{3}})$")


def split_column(split: str, metric: str) -> str:
    """The column (and reported metric) holding ``metric`` measured on ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{split}_{metric}"


def accuracy_column(j: int, split: str = TEST) -> str:
    """The column holding the accuracy on experience ``j`` of ``split``."""
    return split_column(split, f"{_ACC_PREFIX}{j:03d}")


def loss_column(j: int, split: str = TEST) -> str:
    """The column holding the loss on experience ``j`` of ``split``."""
    return split_column(split, f"{_LOSS_PREFIX}{j:03d}")


def experience_column(name: str) -> tuple[str, str, int] | None:
    """``(split, "accuracy" | "loss", j)`` for a per-experience column, else None. A name
    without a split (``acc_exp_003``, how a study names its metric) has split None."""
    match = _PER_EXP.match(name)
    if match is None:
        return None
    return match[1], ("accuracy" if match[2] == _ACC_PREFIX else "loss"), int(match[3])


def reported_every_experience(name: str) -> bool:
    """True when the study metric ``name`` is in every report (so a scheduler can rank trials
    on it)."""
    return name in PER_EXPERIENCE_METRICS or (
        experience_column(name) is not None and experience_column(name)[0] is None)


def is_produced_metric(name: str) -> bool:
    """True when ``name`` can be a study's metric: a metric trials report, named without a
    split (the study's selection says which split ranks configs)."""
    return name in FINAL_METRICS or reported_every_experience(name)


def is_split_metric(name: str) -> bool:
    """True for a study metric measured on a split (accuracy, loss, transfer, forgetting)."""
    return name in SPLIT_METRICS or experience_column(name) is not None


def metric_column(metric: str, split: str) -> str:
    """The column of the study metric ``metric`` on ``split`` (cost metrics have no split)."""
    return split_column(split, metric) if is_split_metric(metric) else metric


# ---- parameters ----------------------------------------------------------------------------------
PARAM_PREFIX = "param_"


def param_column(name: str) -> str:
    """The trials column of the searched parameter ``name``."""
    return f"{PARAM_PREFIX}{name}"


def is_param_column(column: str) -> bool:
    """True for a ``param_<name>`` column."""
    return column.startswith(PARAM_PREFIX)


def param_name(column: str) -> str:
    """The parameter a ``param_<name>`` column holds."""
    return column[len(PARAM_PREFIX):]


# ---- trials.parquet ------------------------------------------------------------------------------
STATUS = "status"
""":data:`TERMINATED` or :data:`ERRORED`."""
TERMINATED = "TERMINATED"
"""Status of a trial that ran to its end, or that a scheduler stopped early."""
ERRORED = "ERROR"
"""Status of a trial that failed for good or diverged."""
ERROR = "error"
"""Why a trial is ERROR (``diverged: ...`` for a diverged trial), else missing."""
EXPERIENCES_DONE = "experiences_done"
STARTED_AT = "started_at"
"""When the trial first started (UTC; a restart after a failure keeps it)."""
FINISHED_AT = "finished_at"
"""When the trial ended (UTC)."""
CONFIG = "config"
"""The trial's config as JSON (exact types; the ``param_<name>`` columns are for filtering)."""
CHECKPOINT = "checkpoint"
"""Where the trial's last checkpoint is (a path or URI in the study's storage)."""
#: Metrics of the trial's last report that its trials row repeats.
TRIAL_METRICS: tuple[str, ...] = (*(split_column(s, m) for s in SPLITS for m in FINAL_METRICS),
                                  TRAIN_TIME_S, PEAK_MEMORY_MB)
#: trials.parquet columns after the ``param_<name>`` ones.
TRIAL_TAIL: tuple[str, ...] = (CONFIG, STATUS, ERROR, EXPERIENCES_DONE, *TRIAL_METRICS,
                               PLUGIN_SPEC, DEVICE, GPU_IDS, NODE_IP, NODE_ID, STARTED_AT,
                               FINISHED_AT,
                               CHECKPOINT, SCHEMA_VERSION_COLUMN)
#: trials.parquet columns, with the ``param_<name>`` columns between the head and the tail.
TRIAL_COLUMNS: tuple[str, ...] = TRIAL_HEAD + TRIAL_TAIL

# ---- matrix.parquet ------------------------------------------------------------------------------
TRAINED_EXP = "trained_exp"
EVAL_EXP = "eval_exp"
ACCURACY = "accuracy"
LOSS = "loss"
#: matrix.parquet columns.
MATRIX_COLUMNS: tuple[str, ...] = (*TRIAL_HEAD, SPLIT, TRAINED_EXP, EVAL_EXP, ACCURACY, LOSS,
                                   SCHEMA_VERSION_COLUMN)

# ---- curves.parquet ------------------------------------------------------------------------------
TRAINING_ITERATION = "training_iteration"
"""Ray Tune's count of the trial's reports (1 for the first experience)."""
#: curves.parquet leading columns; every reported metric follows, then schema_version.
CURVE_ID_COLUMNS: tuple[str, ...] = (*TRIAL_HEAD, EXPERIENCE, TRAINING_ITERATION)
#: Reported metrics in the order curves.parquet shows them (the per-experience columns follow).
CURVE_METRICS: tuple[str, ...] = (
    *(split_column(s, m) for s in SPLITS for m in SPLIT_METRICS), *COST_METRICS,
    "resumed_from", *INFO_FIELDS)

# ---- selection.parquet ---------------------------------------------------------------------------
#: The table of each arm's chosen config and reported figures (one row per arm).
SELECTION_TABLE = "selection"
PROTOCOL = "protocol"
"""The study's selection protocol: 'valid', 'test', 'first_tasks', 'first_task' or
'per_experience'."""
SELECTION_SPLIT = "selection_split"
"""The split configs were ranked on (:data:`VALID`, or :data:`TEST` when the study asked)."""
SELECTION_METRIC = "selection_metric"
"""The column configs were ranked on, e.g. ``valid_final_avg_accuracy``."""
SELECTION_VALUE = "selection_value"
"""The chosen config's mean of :data:`SELECTION_METRIC` over its seeds."""
CHOSEN_CONFIG = "chosen_config"
"""The chosen config as JSON (per experience for 'per_experience': a list)."""
CONFIGS_SEARCHED = "configs_searched"
"""How many configs of the arm were ranked."""
CONFIGS_UNRANKED = "configs_unranked"
"""Configs of the arm not ranked: fewer than ``Study.min_seeds`` of their seeds finished."""
SEARCH_SEEDS = "search_seeds"
"""The seeds the selection ran (JSON list)."""
REPORTED_PHASE = "reported_phase"
"""The phase whose trials give the reported figures (never one the choice was made on, unless
the study selects on 'test')."""
REPORTED_METRIC = "reported_metric"
"""The reported column, e.g. ``test_final_avg_accuracy``."""
REPORTED_MEAN, REPORTED_STD, REPORTED_N = "reported_mean", "reported_std", "reported_n"
REPORTED_LOW, REPORTED_HIGH = "reported_low", "reported_high"
"""The confidence interval of the reported mean (see :data:`INTERVAL`)."""
INTERVAL = "interval"
"""How the interval was computed, e.g. ``95% t`` (Student-t over the seeds) or ``95%
bootstrap``."""
VERDICT = "verdict"
"""The arm against the best arm and the baseline, from the paired tests in
comparisons.parquet: e.g. ``best``, ``≈ best``, ``< best; > baseline``."""
REPORTED_SEEDS = "reported_seeds"
"""The seeds behind the reported figures (JSON list)."""
SEARCH_TEST_MEAN, SEARCH_TEST_STD = "search_test_mean", "search_test_std"
"""The chosen config's test value on the selection's own seeds and data (for comparison only:
with 'valid' selection it was not chosen on it, but it ran on the seeds that chose it)."""
CONFIRM_MEAN, CONFIRM_STD, CONFIRM_N = "confirm_mean", "confirm_std", "confirm_n"
"""The chosen config's test value on the confirmation seeds (NaN without confirmation)."""
INTRANSIGENCE = "intransigence"
"""Chaudhry et al. 2018 ("Riemannian Walk", sec. 4): the mean over experiences k of the joint
arm's test accuracy on k after training on 0..k minus this arm's accuracy on k right after
learning it, over the seeds both ran (NaN without a ``joint=True`` arm)."""
#: selection.parquet columns; ``param_<name>`` columns of the chosen config follow
#: :data:`CHOSEN_CONFIG`.
SELECTION_HEAD: tuple[str, ...] = (STUDY, ARM, PROTOCOL, SELECTION_SPLIT, SELECTION_METRIC,
                                   SELECTION_VALUE, CONFIGS_SEARCHED, CONFIGS_UNRANKED,
                                   SEARCH_SEEDS,
                                   CHOSEN_CONFIG)
SELECTION_TAIL: tuple[str, ...] = (REPORTED_PHASE, REPORTED_METRIC, REPORTED_MEAN, REPORTED_STD,
                                   REPORTED_N, REPORTED_LOW, REPORTED_HIGH, INTERVAL, VERDICT,
                                   INTRANSIGENCE,
                                   REPORTED_SEEDS, SEARCH_TEST_MEAN,
                                   SEARCH_TEST_STD, CONFIRM_MEAN, CONFIRM_STD, CONFIRM_N,
                                   SCHEMA_VERSION_COLUMN)

# ---- comparisons.parquet -------------------------------------------------------------------------
#: Paired comparisons of the arms' reported runs over their shared seeds: each arm against the
#: best arm and against the baseline (``raycl.study.stats.paired_comparisons``, Holm-corrected).
COMPARISONS_TABLE = "comparisons"

# ---- column types --------------------------------------------------------------------------------
#: Integer columns of any table.
INT_COLUMNS: frozenset[str] = frozenset({
    SEED, EXPERIENCES_DONE, TRAINED_EXP, EVAL_EXP, EXPERIENCE, TRAINING_ITERATION,
    "resumed_from", CONFIGS_SEARCHED, CONFIGS_UNRANKED, REPORTED_N, CONFIRM_N,
    SCHEMA_VERSION_COLUMN})
#: String columns of any table.
STR_COLUMNS: frozenset[str] = frozenset({STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, CONFIG_KEY,
                                         CONFIG, STATUS, ERROR,
                                         SPLIT, CHECKPOINT, PROTOCOL, SELECTION_SPLIT,
                                         SELECTION_METRIC, CHOSEN_CONFIG, SEARCH_SEEDS,
                                         REPORTED_PHASE, REPORTED_METRIC, REPORTED_SEEDS,
                                         INTERVAL, VERDICT,
                                         *INFO_FIELDS})
#: UTC timestamp columns.
TIME_COLUMNS: frozenset[str] = frozenset({STARTED_AT, FINISHED_AT})
