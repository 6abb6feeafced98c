"""Wall time of one study on local disk and on S3 (a local S3-compatible server), alternated.

    .venv/bin/python bench/bench_storage.py [--study studies/ewc_vs_si.py] [--repeats 1]
        [-- extra study options, default: --num-samples 1 --confirm-seeds none]

The S3 server is moto's server mode on 127.0.0.1 (the dev extra installs it;
``tests/s3_local.py`` starts it), with the endpoint in the storage URI's query, as the live
tests do. Each run is ``python -m raycl.study STUDY --storage ...`` in a new process (its own
local Ray), timed from the outside; also printed: the study's own figure (``in N s`` of its
last line: Ray start-up to the end). S3 here is a local server: the difference is the cost of
the S3 protocol (every checkpoint, table, lock and Ray experiment-state file goes through
HTTP), not of a network.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from s3_local import MotoServer, create_bucket  # noqa: E402


def run_once(study: str, storage: str, extra: list[str], env: dict[str, str]) -> tuple[float,
                                                                                        float]:
    """(wall seconds, the study's own seconds) of one run into ``storage``."""
    command = [sys.executable, "-m", "raycl.study", study, "--storage", storage, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_storage: the study failed ({done.returncode}):\n"
                 f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    found = re.search(r" in ([0-9.]+) s\n", done.stdout)
    return wall, float(found[1]) if found else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/ewc_vs_si.py")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more study options (after --)")
    args = ap.parse_args()
    extra = args.extra or ["--num-samples", "1", "--confirm-seeds", "none"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_ENDPOINT_URL", None)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")})
    server = MotoServer()
    times: dict[str, list[tuple[float, float]]] = {"local": [], "s3": []}
    try:
        create_bucket(server.endpoint, "bench")
        with tempfile.TemporaryDirectory(prefix="raycl-bench-storage-") as tmp:
            for i in range(args.repeats):
                for kind in ("local", "s3"):
                    storage = (f"{tmp}/run{i}" if kind == "local" else
                               f"s3://bench/run{i}?endpoint_override={server.endpoint}"
                               f"&scheme=http")
                    times[kind].append(run_once(args.study, storage, extra, env))
                    wall, own = times[kind][-1]
                    print(f"{kind:>5} run {i + 1}: {wall:6.1f} s wall ({own:.1f} s study)",
                          flush=True)
    finally:
        server.stop()
    print(f"study {args.study} {' '.join(extra)}, median of {args.repeats}:")
    for kind, runs in times.items():
        print(f"  {kind:>5}: {statistics.median(w for w, _ in runs):6.1f} s wall, "
              f"{statistics.median(o for _, o in runs):6.1f} s study")


if __name__ == "__main__":
    main()
