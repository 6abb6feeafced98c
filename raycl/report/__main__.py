"""``python -m raycl.report RESULTS_DIR [--out DIR]``: see :func:`raycl.report.main`."""

from __future__ import annotations

import sys

from raycl.report import main

if __name__ == "__main__":
    sys.exit(main())
