"""Worker functions for the launcher-death tests: `python -m tests.helpers.orphans MARKS_DIR`
launches two workers that mark their pid and then take long to set up (as a worker
loading data before `fit` does); the test SIGKILLs this launcher meanwhile."""

from __future__ import annotations

import os
import sys
import time


def long_setup(marks_dir: str) -> None:
    open(os.path.join(marks_dir, str(os.getpid())), "w").close()
    time.sleep(300)


def no_training() -> None:
    """Returns at once (the process backend's startup is what the test looks at)."""


if __name__ == "__main__":
    import distcb

    distcb.run(long_setup, num_workers=2, backend="process", args=(sys.argv[1],))
