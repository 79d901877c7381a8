"""`make bench`: run every benchmark in one go and write docs/BENCHMARKS.md.

Each benchmark module exposes `main() -> str` (a Markdown section). They run
one after another in this process, so that the ratios inside each section are
measured in one run on the same machine state. Modules may add rows to
`common.SUMMARY` (the performance issue's table: figure, before, after, goal,
verdict, command); they are printed first.

    python bench/run_all.py [--quick] [--out PATH] [module ...]    # default: all of MODULES

``--quick`` runs the modules that have one in their short mode (to check the
scripts, not for figures) and ``--out`` writes somewhere else than
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import platform
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

MODULES = [
    "bench_worker",
    "bench_scale",
    "bench_before_after",
    "bench_sync",
    "bench_codec",
    "bench_ingest",
    "bench_ray",
    "profile_steps",
    "bench_sinks",
    "bench_thread",
    "bench_validation",
    "bench_coordinator_load",
    "bench_resume",
    "bench_chaos",
    "bench_viewers",
    "bench_jax",
]


def main() -> None:
    import common

    parser = argparse.ArgumentParser(description="make bench")
    parser.add_argument("modules", nargs="*", default=MODULES)
    parser.add_argument("--quick", action="store_true", help="short runs: to check the scripts")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    options = parser.parse_args()
    started = common.load_average()
    sections = []
    for name in options.modules:
        print(f"running {name} ...", flush=True)
        try:
            run = importlib.import_module(name).main
            quick = options.quick and "quick" in inspect.signature(run).parameters
            sections.append(run(quick=True) if quick else run())
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
        f"Load average when `make bench` started: {started}; each section prints its own.",
        "",
    ]
    if options.quick:
        header += ["**Quick mode (`--quick`): short runs to check the scripts, not figures.**", ""]
    if common.SUMMARY:
        header += [
            "## Performance and scale (issue 14): every figure, before → after",
            "",
            "Before: the issue's own measurements (`bench/bench_worker.py` and `make bench` "
            "before the work; one run each). After: this run, min–**median**–max over its jobs "
            "where it has several. A goal is *met* only when the whole spread is on its side; "
            "a spread that covers it is *not resolved*. Why the rows that miss their goal "
            "miss it: docs/performance.md, with the profile that shows it.",
            "",
            "| figure | before | after | goal | verdict | command |",
            "|---|---|---|---|---|---|",
        ]
        for row in common.SUMMARY:
            header.append(
                f"| {row.figure} | {row.before} | {row.after} | {row.goal} | {row.verdict} "
                f"| {row.command} |"
            )
        header.append("")
    text = "\n".join(header + sections)
    path = options.out
    with open(path, "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
