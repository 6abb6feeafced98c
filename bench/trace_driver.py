"""Run ``python -m raycl.study`` with tracemalloc on, for finding where the driver's memory goes.

    .venv/bin/python bench/trace_driver.py FIRST LAST STUDY_FILE [raycl.study options]

``bench_load.py --tracemalloc`` runs the driver through this. Snapshots are taken when the
FIRST-th and the LAST-th trial finish (from a Tune callback's ``on_trial_complete``); the top
allocation sites by growth between the two, and the traced total, go to stderr (the driver's
log), with the growth per trial.
"""

from __future__ import annotations

import gc
import linecache
import os
import runpy
import sys
import tracemalloc
from typing import Any

TOP = 25


def _report(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, trials: int) -> None:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, linecache.__file__)]
    first, last = first.filter_traces(filters), last.filter_traces(filters)
    for key in ("traceback", "filename"):
        stats = last.compare_to(first, key)
        total = sum(s.size_diff for s in stats)
        print(f"\n[tracemalloc] growth over {trials} trials by {key}: {total / 1e6:+.2f} MB "
              f"({total / max(trials, 1):+.0f} B/trial); top {TOP}:", file=sys.stderr)
        for stat in stats[:TOP]:
            print(f"  {stat.size_diff / 1e3:+9.1f} kB {stat.count_diff:+7d} blocks "
                  f"({stat.size_diff / max(trials, 1):+8.0f} B/trial)", file=sys.stderr)
            if key == "traceback":
                for line in stat.traceback.format(limit=8, most_recent_first=True)[:16]:
                    print(f"      {line}", file=sys.stderr)
            else:
                print(f"      {stat.traceback[0].filename}", file=sys.stderr)
    sys.stderr.flush()


def main() -> None:
    first_at, last_at = int(sys.argv[1]), int(sys.argv[2])
    args = sys.argv[3:]
    tracemalloc.start(int(os.environ.get("RAYCL_TRACE_FRAMES", "12")))

    from raycl.tune.callbacks import ParquetCallback

    state: dict[str, Any] = {"done": 0, "first": None}
    complete = ParquetCallback.on_trial_complete

    def on_trial_complete(self: Any, *a: Any, **kw: Any) -> None:
        complete(self, *a, **kw)
        state["done"] += 1
        if state["done"] in (first_at, last_at):
            gc.collect()
            snap = tracemalloc.take_snapshot()
            current, _ = tracemalloc.get_traced_memory()
            print(f"[tracemalloc] trial {state['done']}: traced {current / 1e6:.1f} MB",
                  file=sys.stderr, flush=True)
            if state["done"] == first_at:
                state["first"] = snap
            elif state["first"] is not None:
                _report(state["first"], snap, last_at - first_at)
                state["first"] = None

    ParquetCallback.on_trial_complete = on_trial_complete  # type: ignore[method-assign]
    sys.argv = ["raycl.study", *args]
    runpy.run_module("raycl.study", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
