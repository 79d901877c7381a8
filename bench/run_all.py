"""`make bench`: run every benchmark in one go and write docs/BENCHMARKS.md.

Each benchmark module exposes `main() -> str` (a Markdown section). They run
one after another in this process, so that the ratios inside each section are
measured in one run on the same machine state.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

MODULES = [
    "bench_worker",
    "bench_sinks",
    "bench_ray",
    "bench_thread",
    "bench_validation",
    "bench_coordinator_load",
    "bench_resume",
    "bench_codec",
]


def main() -> None:
    only = sys.argv[1:] or MODULES
    sections = []
    for name in only:
        print(f"running {name} ...", flush=True)
        try:
            sections.append(importlib.import_module(name).main())
        except Exception:
            failure = traceback.format_exc()
            sections.append(f"## {name}\n\nFailed in this run:\n\n```\n{failure}```\n")
    header = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {datetime.date.today().isoformat()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "This machine is shared and noisy: read medians and the ratios measured within one run,",
        "not lone absolute times. Each section names the command that reproduces it.",
        "",
    ]
    text = "\n".join(header + sections)
    path = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    with open(path, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
