"""Compare two runs of the same study table by table, leaving out what differs between any runs.

    .venv/bin/python scripts/compare_results.py OLD_STUDY_DIR NEW_STUDY_DIR

A refactoring must leave a study's results as they were: same trials, same parameters, same
accuracy matrices and metrics for the same seeds. Columns that measure time or memory, Ray's
per-run trial ids and where a trial ran differ between any two runs and are left out. Rows are
matched on ``trial_key`` (and experience), so the order in which trials finished does not matter.
Exit status 0 when every table matches, 1 otherwise (the first differences are printed).
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from raycl.analysis import load_study
from raycl.study.schema import (
    EVAL_EXP,
    EXPERIENCE,
    FINISHED_AT,
    NODE_ID,
    NODE_IP,
    PEAK_MEMORY_MB,
    SPLIT,
    STARTED_AT,
    TRAIN_TIME_S,
    TRAINED_EXP,
    TRIAL_ID,
    TRIAL_KEY,
)

#: Columns that differ between any two runs of the same study.
VOLATILE = {TRIAL_ID, STARTED_AT, FINISHED_AT, TRAIN_TIME_S, "eval_time_s", PEAK_MEMORY_MB,
            NODE_IP, NODE_ID, "resumed_from", "checkpoint_note", "device_note"}
_KEYS = {"trials": [TRIAL_KEY], "matrix": [TRIAL_KEY, SPLIT, TRAINED_EXP, EVAL_EXP],
         "curves": [TRIAL_KEY, EXPERIENCE]}


def comparable(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """``frame`` without volatile columns, sorted by its keys, with a plain index."""
    keep = [c for c in frame.columns if c not in VOLATILE]
    return frame[keep].sort_values(_KEYS[table]).reset_index(drop=True)


def differences(old_dir: str, new_dir: str, rtol: float = 0.0) -> list[str]:
    """One line per difference between the two studies' tables (empty when they match)."""
    old, new = load_study(old_dir), load_study(new_dir)
    lines = []
    for table in ("trials", "matrix", "curves"):
        a, b = comparable(getattr(old, table), table), comparable(getattr(new, table), table)
        if sorted(a.columns) != sorted(b.columns):
            lines.append(f"{table}: columns differ: only old {sorted(set(a) - set(b))}, "
                         f"only new {sorted(set(b) - set(a))}")
            continue
        if len(a) != len(b):
            lines.append(f"{table}: {len(a)} rows before, {len(b)} after")
            continue
        try:
            pd.testing.assert_frame_equal(a, b[a.columns], check_dtype=True, rtol=rtol,
                                          check_exact=rtol == 0.0)
        except AssertionError as err:
            lines.append(f"{table}: {' '.join(str(err).split())[:600]}")
        else:
            print(f"{table}: {len(a)} rows x {len(a.columns)} columns equal "
                  f"(left out: {sorted(VOLATILE & set(getattr(old, table).columns))})")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", help="study folder of the reference run (<storage>/<study name>)")
    p.add_argument("new", help="study folder of the run to check")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="relative tolerance for floats (default 0: bit-identical)")
    args = p.parse_args()
    found = differences(args.old, args.new, args.rtol)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
