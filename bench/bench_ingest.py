"""Benchmark: the coordinator's ingest before and after issue 14 (and the JSON wire before).

    python bench/bench_ingest.py

Runs `bench/codec_probe.py` against three checkouts, each in its own process
(rounds interleaved): the JSON wire of the first layout (commit 5f93c4e: a dict
per batch entry in strict JSON text frames), the MessagePack wire with columnar
frames before issue 14 (6a5cd3c: each step merged on its own), and this
checkout (steps merged column by column). The old checkouts come from
temporary ``git worktree add --detach`` folders, removed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import load_line, spread  # noqa: E402

VERSIONS = [
    ("5f93c4e", "JSON wire, a dict per entry (5f93c4e)"),
    ("6a5cd3c", "MessagePack, columnar frames, per-step merge (6a5cd3c, before issue 14)"),
    (None, "this checkout: column-wise merge"),
]
ROUNDS = 5


def probe(code: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=code)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "codec_probe.py")],
        env=env,
        cwd=tempfile.gettempdir(),  # not this checkout's folder: the probed one is imported
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(rounds: int = ROUNDS) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {label: [] for _, label in VERSIONS}
    with tempfile.TemporaryDirectory(prefix="distcb-versions-") as folder:
        trees = {}
        try:
            for rev, label in VERSIONS:
                if rev is None:
                    trees[label] = ROOT
                    continue
                path = os.path.join(folder, rev)
                subprocess.run(
                    ["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, rev],
                    check=True,
                )
                trees[label] = path
            for _ in range(rounds):
                for _, label in VERSIONS:
                    results[label].append(probe(trees[label]))
        finally:
            for rev, label in VERSIONS:
                if rev is not None and label in trees:
                    subprocess.run(
                        ["git", "-C", ROOT, "worktree", "remove", "--force", trees[label]],
                        check=False,
                    )
    return results


def main(quick: bool = False) -> str:
    header = load_line()
    rounds = 1 if quick else ROUNDS
    results = measure(rounds)
    first = next(iter(results.values()))[0]
    lines = [
        "## Coordinator ingest: per-step merge against column merge (issue 14)",
        "",
        f"Command: `python bench/bench_ingest.py` (also run by `make bench`). {header}",
        "",
        f"`bench/codec_probe.py` in each checkout, {rounds} interleaved rounds, "
        "min–**median**–max per CPU-second. A batch frame holds "
        f"{int(first['entries_per_frame'])} entries (`loss`, `accuracy`, float32 values, "
        "samples). Encode/decode: one frame to its wire bytes and back, as the websocket "
        "transport does it. Ingest: what the coordinator does with the frames of "
        f"{int(first['ranks'])} workers once they arrived: decode, queue in the batch "
        "merger, merge every step all workers sent (the engine, the callbacks and the "
        "sockets come on top: see the scale section for the whole path).",
        "",
        "| wire and merge | frame bytes | encode frames/s | decode frames/s "
        "| ingest batch records/s |",
        "|---|---:|---:|---:|---:|",
    ]
    medians = {}
    for label, runs in results.items():
        ingest = [r["ingest_records_per_cpu_s"] for r in runs]
        medians[label] = statistics.median(ingest)
        lines.append(
            f"| {label} | {int(runs[0]['frame_bytes']):,} "
            f"| {spread([r['encode_frames_per_s'] for r in runs], '{:,.0f}')} "
            f"| {spread([r['decode_frames_per_s'] for r in runs], '{:,.0f}')} "
            f"| {spread(ingest, '{:,.0f}')} |"
        )
    labels = [label for _, label in VERSIONS]
    lines += [
        "",
        f"Ingest, median: {medians[labels[2]] / medians[labels[1]]:.1f}× the per-step merge "
        f"and {medians[labels[2]] / medians[labels[0]]:.1f}× the JSON wire.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
