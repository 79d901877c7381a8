"""Benchmark: the synchronous moons example's own cost (issue 14, item 4).

    python bench/bench_sync.py [--quick]

Two tf_keras workers under MultiWorkerMirroredStrategy on loopback (one intra-op
and one inter-op thread each, as `examples/moons.py` runs them;
bench/sync_worker.py), each running, in interleaved rounds, fits of `EPOCHS`
epochs of `examples/moons.py`'s training:

* plain: the same loop with tf_keras's EarlyStopping and ModelCheckpoint on every
  worker, no distcb;
* distcb: `WorkerCallback` on both, the coordinator (this process, a real
  `Coordinator` behind a real `WebSocketServer`) running EarlyStopping and
  ModelCheckpoint once, as `examples/moons.py` does.

Both use `PersistentValidation` (the example's validation; without it both would
pay `fit`'s per-epoch validation iterator, see the validation section). The figure
is each fit's median epoch time; a round's ratio is distcb over plain. Then the
single-process tf_keras anchor (../shared/anchors/seed_moons_tfkeras.py, its
whole `fit` over `EPOCHS` epochs, validation included) for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import SummaryRow, load_line, spread, summary, verdict  # noqa: E402

EPOCHS = 150
ROUNDS = 5
GOAL = 1.05
ANCHOR = os.path.join(ROOT, "..", "shared", "anchors", "seed_moons_tfkeras.py")


async def _answer(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("a sync benchmark worker exited")
        text = line.decode().strip()
        if text.startswith("{"):
            result: dict[str, Any] = json.loads(text)
            return result


async def _ask(workers: list[asyncio.subprocess.Process], command: dict[str, Any]) -> list[float]:
    for process in workers:
        assert process.stdin is not None
        process.stdin.write((json.dumps(command) + "\n").encode())
        await process.stdin.drain()
    if command["kind"] == "quit":
        return []
    answers = await asyncio.gather(*(_answer(p) for p in workers))
    return [a["ms_per_epoch"] for a in answers]


async def _distcb_fit(workers: list[asyncio.subprocess.Process], folder: str) -> float:
    from distcb.callbacks import EarlyStopping, ModelCheckpoint
    from distcb.coordinator.engine import Coordinator
    from distcb.server import WebSocketServer

    coordinator = Coordinator(
        [
            EarlyStopping(monitor="val_loss", mode="min", patience=10**6),
            ModelCheckpoint(
                os.path.join(folder, "best_model.h5"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
            ),
        ],
        world_size=2,
    )
    async with WebSocketServer(coordinator) as server:
        run = asyncio.ensure_future(coordinator.run())
        times = await _ask(
            workers, {"kind": "distcb", "address": server.address, "token": server.token}
        )
        await run
    return max(times)


async def measure(rounds: int, epochs: int) -> dict[str, list[float]]:
    import tempfile

    from distcb.launch.process import free_ports

    ports = free_ports(2)
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        OMP_NUM_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    env.setdefault("PYTHONPATH", ROOT)
    script = os.path.join(ROOT, "bench", "sync_worker.py")
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            str(rank),
            json.dumps(ports),
            str(epochs),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for rank in range(2)
    ]
    out: dict[str, list[float]] = {"plain": [], "distcb": []}
    try:
        await asyncio.gather(*(_answer(p) for p in workers))
        with tempfile.TemporaryDirectory() as folder:
            for r in range(rounds):
                order = ["plain", "distcb"] if r % 2 == 0 else ["distcb", "plain"]
                for kind in order:
                    if kind == "plain":
                        out["plain"].append(max(await _ask(workers, {"kind": "plain"})))
                    else:
                        out["distcb"].append(await _distcb_fit(workers, folder))
        await _ask(workers, {"kind": "quit"})
        for process in workers:
            await asyncio.wait_for(process.wait(), 60)
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return out


def anchor(epochs: int, rounds: int) -> list[float]:
    """ms per epoch of the single-process tf_keras anchor (its whole fit)."""
    out = []
    for _ in range(rounds):
        text = subprocess.run(
            [sys.executable, ANCHOR, str(epochs)],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(ANCHOR),
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            timeout=900,
        ).stdout
        found = re.search(r"ms_per_epoch=([0-9.]+)", text)
        if found is None:
            raise RuntimeError(f"the anchor printed no ms_per_epoch: {text!r}")
        out.append(float(found.group(1)))
    return out


def main(quick: bool = False) -> str:
    header = load_line()
    rounds, epochs = (2, 40) if quick else (ROUNDS, EPOCHS)
    times = asyncio.run(measure(rounds, epochs))
    single = anchor(epochs, 1 if quick else 3)
    ratios = [d / p for d, p in zip(times["distcb"], times["plain"], strict=True)]
    single_ms = statistics.median(single)
    lines = [
        "## The synchronous example's own cost (issue 14)",
        "",
        f"Command: `python bench/bench_sync.py` (also run by `make bench`). {header}",
        "",
        "`examples/moons.py`'s training on 2 tf_keras workers (MultiWorkerMirroredStrategy "
        "on loopback, one intra-op and one inter-op thread each, `PersistentValidation`), "
        f"{rounds} interleaved rounds of one fit of {epochs} epochs per configuration; "
        "per fit the median epoch time of the slower worker (the first 10 epochs skipped).",
        "",
        "| run | ms/epoch, min–**median**–max | × single-process anchor (median) |",
        "|---|---|---:|",
        f"| same MWMS loop, tf_keras EarlyStopping + ModelCheckpoint on every worker, no "
        f"distcb | {spread(times['plain'], '{:.1f}')} "
        f"| {statistics.median(times['plain']) / single_ms:.2f} |",
        f"| distcb (`WorkerCallback`; EarlyStopping + ModelCheckpoint once, on the "
        f"coordinator) | {spread(times['distcb'], '{:.1f}')} "
        f"| {statistics.median(times['distcb']) / single_ms:.2f} |",
        f"| single process, tf_keras, `fit(validation_data=...)` "
        f"(`seed_moons_tfkeras.py`, its whole fit) | {spread(single, '{:.1f}')} | 1.00 |",
        "",
        f"distcb over plain, per round: {spread(ratios)} (goal ≤ {GOAL:.2f}: "
        f"{verdict(ratios, GOAL)}). The two-process strategy itself, not distcb, is what "
        "separates both from the single process: a collective all-reduce over loopback "
        "per step on two busy cores.",
        "",
    ]
    summary(
        SummaryRow(
            "synchronous moons (2 workers, MWMS), distcb vs the same loop with plain "
            "tf_keras callbacks, per epoch",
            "never measured",
            f"{spread(ratios)}; plain MWMS {statistics.median(times['plain']) / single_ms:.2f}× "
            f"and distcb {statistics.median(times['distcb']) / single_ms:.2f}× the "
            f"single-process anchor ({single_ms:.0f} ms/epoch here)",
            f"≤ {GOAL:.2f}×",
            verdict(ratios, GOAL),
            "`python bench/bench_sync.py`",
        )
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 40 epochs")
    print(main(parser.parse_args().quick))
