"""Benchmark (issue 11): the wire codec and the coordinator's ingest rate, before and after.

Issue 11 replaced the hand-written JSON codec (a ``to_dict``/``from_dict`` pair per
message in ``distcb/core/messages.py``, ``json.dumps``/``json.loads`` in the transports)
with msgspec Structs over MessagePack and columnar batch frames (PROTOCOL_VERSION 2).
This script measures both trees in one run:

1. **Codec**: per message, what each end of a websocket does, validation included.
   Encode is what the sender does from its values to the frame's bytes; for a batch
   frame that starts from the K logs dicts, because the trees split that work
   differently (the old worker made a ``BatchEntry`` per step and cleaned values in
   ``to_dict``; the new one keeps the dicts in its ``BatchBuffer`` and cleans and
   packs them into columns when it takes a frame). Decode is the receiver's bytes to
   a validated message object (old: UTF-8 text, ``json.loads``, ``decode``; new:
   ``decode_from_worker`` / ``decode_from_coordinator``).
2. **Ingest**: one coordinator, in its own process, behind the tree's websocket server
   on loopback, with one callback that has a batch hook (every batch merged, the hook
   run); N workers in a second process stream batch logs as fast as the protocol lets
   them. *deciding*: the callback may decide on batch ends, so the window rule is on
   (W = 32, frames of W/4 = 8 steps in both trees). *observing*: it does not; each tree
   frames and bounds run-ahead as its own workers do. The workers are a minimal client
   of each tree's protocol (frames encoded by the tree's code before the clock starts;
   the window rule and the barriers obeyed), so that the coordinator is what is
   measured; ``--client scripted`` drives each tree's own ``distcb.testing.ScriptedWorker``
   instead. Measured inside the coordinator from its first batch hook to its last:
   batch logs merged per second (steps x N) and the coordinator process's CPU time per
   batch log; the workers' process CPU time per batch log beside it.

The old tree is commit 15ace3a, extracted with ``git archive`` into a temporary
directory unless ``--old-tree`` names a checkout of it. Every measurement runs in a
child process whose PYTHONPATH is one tree; old and new children alternate (the
order flips every round), and the report gives medians over rounds and new/old ratios.
About 60 s of CPU; 2-3 minutes of wall time on a shared 2-core machine.

    python bench/bench_codec.py             # the Markdown section
    python bench/bench_codec.py --json      # the medians and every round, as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_COMMIT = "15ace3a"
TREES = ("old", "new")
CLIENTS = ("raw", "scripted")
MODES = ("deciding", "observing")

CODEC_ROUNDS = 5
FRAME_SIZES = (1, 8, 32)
METRICS = ("loss", "accuracy", "precision", "recall")

INGEST_ROUNDS = 3
INGEST_WORKERS = (8, 32)
INGEST_BATCH_LOGS = 24_000  # per run: steps x workers
INGEST_EPOCHS = 3
WINDOW_STEPS = 32  # both trees' default; frames of W/4 steps

COMMAND = "python bench/bench_codec.py"


# ------------------------------------------------------------------ shared by the children


def _batch_logs(count: int, seed: int = 11) -> list[tuple[int, dict[str, float], float]]:
    """`count` (step, logs, samples) with full-precision floats, as Keras reports them."""
    rng = random.Random(seed)
    return [(step, {m: rng.random() for m in METRICS}, 64.0 * (step + 1)) for step in range(count)]


def _epoch_logs() -> dict[str, float]:
    rng = random.Random(12)
    return {name: rng.random() for m in METRICS for name in (m, f"val_{m}")}


# CPU time of this (single-threaded) process: on a shared machine the wall clock also
# counts the time other processes held the core.
_CLOCK = time.process_time


def _per_op_s(fn: Callable[[], Any], target_s: float = 0.03, repeats: int = 3) -> float:
    """Median CPU seconds per call of `fn` over `repeats` timings of about `target_s` each."""
    calls, started = 0, _CLOCK()
    while _CLOCK() - started < 0.01:
        fn()
        calls += 1
    per_call = (_CLOCK() - started) / calls
    n = max(1, int(target_s / per_call))
    timings = []
    for _ in range(repeats):
        started = _CLOCK()
        for _ in range(n):
            fn()
        timings.append((_CLOCK() - started) / n)
    return statistics.median(timings)


def _module(name: str) -> Any:
    return importlib.import_module(name)


class Wire:
    """One tree's wire: its messages, encoders and decoders, as each end uses them."""

    def __init__(self, tree: str) -> None:
        self.tree = tree
        # Modules of whichever tree is on PYTHONPATH: typed Any, the two trees differ.
        if tree == "old":
            self.messages = _module("distcb.core.messages")
            self.decisions = _module("distcb.core.decisions")
            connection = _module("distcb.transport.websocket_connection")
            self._reject_constant = connection._reject_constant
        else:
            self.messages = _module("distcb.protocol.messages")
            self.decisions = _module("distcb.protocol.decisions")
            self.logs = _module("distcb.protocol.logs")
            self.buffer = _module("distcb.worker.batches").BatchBuffer(0, max_frame_entries=4096)

    # ------------------------------------------------ bytes
    def encode(self, message: Any) -> bytes:
        """What `WebSocketConnection.send` puts in the frame (old: aiohttp's send_str
        encodes the JSON text as UTF-8)."""
        if self.tree == "old":
            return json.dumps(self.messages.encode(message), allow_nan=False).encode("utf-8")
        return bytes(self.messages.encode(message))

    def decode_from_worker(self, data: bytes) -> Any:
        """What the coordinator's `WebSocketConnection.receive` does with a frame."""
        if self.tree == "old":
            text = data.decode("utf-8")  # aiohttp, for a TEXT frame
            return self.messages.decode(json.loads(text, parse_constant=self._reject_constant))
        return self.messages.decode_from_worker(data)

    def decode_from_coordinator(self, data: bytes) -> Any:
        if self.tree == "old":
            return self.decode_from_worker(data)  # one decoder for both directions
        return self.messages.decode_from_coordinator(data)

    async def send_raw(self, connection: Any, data: bytes) -> None:
        """Send already encoded bytes on a connection (a raw client's shortcut)."""
        if self.tree == "old":
            await connection._ws.send_str(data.decode("utf-8"))
        else:
            await connection._ws.send_bytes(data)

    # ------------------------------------------------ worker -> coordinator
    def frames(self, rank: int, epoch: int, entries: list[Entry]) -> list[Any]:
        """The batch frames a worker makes of these steps' logs, as its code makes them."""
        m = self.messages
        if self.tree == "old":  # link.end_batch made a BatchEntry per step, link._frames a frame
            made = [m.BatchEntry(step, logs, samples) for step, logs, samples in entries]
            return [m.BatchFrame(rank, epoch, tuple(made))]
        # WorkerSession.end_batch keeps the dicts; the IO thread takes columnar frames.
        self.buffer.rank = rank
        self.buffer.reset(epoch)
        for step, logs, samples in entries:
            self.buffer.end(step, logs, samples)
        return self.buffer.take_frames(final=True)

    def frame_entries(self, message: Any) -> list[tuple[int, dict[str, Any]]]:
        """(step, logs) of a decoded frame, to check it."""
        if self.tree == "old":
            return [(e.step, e.logs) for e in message.entries]
        return [
            (step, {name: column[i] for name, column in message.logs.items()})
            for i, step in enumerate(message.steps)
        ]

    def epoch_end(self, rank: int, epoch: int, logs: dict[str, Any]) -> Any:
        m = self.messages
        if self.tree == "old":
            return m.EpochEnd(rank, epoch, logs, samples=6400.0, val_samples=1600.0)
        clean = self.logs.clean_logs(logs)  # WorkerCallback cleans, then builds the message
        return m.EpochEnd(rank=rank, epoch=epoch, logs=clean, samples=6400.0, val_samples=1600.0)

    def join(self, rank: int, world_size: int, epochs: int, steps: int) -> Any:
        m = self.messages
        if self.tree == "old":
            return m.Join(rank, world_size, {"epochs": epochs, "steps": steps})
        params = m.JoinParams(epochs=epochs, steps=steps)
        return m.Join(rank=rank, world_size=world_size, params=params)

    def train_end(self, rank: int) -> Any:
        return self.messages.TrainEnd(rank=rank)

    def done(self, rank: int) -> Any:
        return self.messages.Done(rank=rank)

    # ------------------------------------------------ coordinator -> worker
    def epoch_reply(self, epoch: int) -> Any:
        d = self.decisions
        decisions = (
            d.SetLearningRate(at=d.EffectPoint.epoch_begin(epoch + 1), learning_rate=0.0005),
            d.SnapshotWeights(at=d.EffectPoint.epoch_end(epoch), snapshot_id=epoch),
        )
        return self.messages.EpochReply(epoch=epoch, decisions=decisions)

    def progress(self, epoch: int, processed_step: int) -> Any:
        return self.messages.Progress(epoch=epoch, processed_step=processed_step)


Entry = tuple[int, dict[str, float], float]


def child_codec(tree: str) -> dict[str, Any]:
    """One round of every codec case in this process's tree (CPU seconds per call)."""
    wire = Wire(tree)
    out: dict[str, Any] = {}
    for k in FRAME_SIZES:
        entries = _batch_logs(k)

        def encode(entries: list[Entry] = entries) -> list[bytes]:
            return [wire.encode(f) for f in wire.frames(3, 5, entries)]

        [data] = encode()
        received = wire.frame_entries(wire.decode_from_worker(data))
        if received != [(step, logs) for step, logs, _ in entries]:
            raise AssertionError(f"{tree}: a frame of {k} batch logs does not decode to them")
        [built] = wire.frames(3, 5, entries)
        out[f"batches, K={k}"] = {
            "batch_logs": k,
            "bytes": len(data),
            "encode_s": _per_op_s(encode),
            "serialize_s": _per_op_s(functools.partial(wire.encode, built)),
            "decode_s": _per_op_s(functools.partial(wire.decode_from_worker, data)),
        }
    logs = _epoch_logs()
    data = wire.encode(wire.epoch_end(3, 5, logs))
    if wire.decode_from_worker(data).logs != logs:
        raise AssertionError(f"{tree}: epoch_end does not decode to its logs")
    out["epoch_end"] = {
        "batch_logs": 0,
        "bytes": len(data),
        "encode_s": _per_op_s(lambda: wire.encode(wire.epoch_end(3, 5, logs))),
        "decode_s": _per_op_s(functools.partial(wire.decode_from_worker, data)),
    }
    for name, message in (
        ("epoch_reply, 2 decisions", wire.epoch_reply(5)),
        ("progress, no decision", wire.progress(5, 123)),
    ):
        data = wire.encode(message)
        if wire.decode_from_coordinator(data) != message:
            raise AssertionError(f"{tree}: {name} does not decode to itself")
        out[name] = {
            "batch_logs": 0,
            "bytes": len(data),
            "encode_s": _per_op_s(functools.partial(wire.encode, message)),
            "decode_s": _per_op_s(functools.partial(wire.decode_from_coordinator, data)),
        }
    return out


def _check_tree(tree: str) -> None:
    """Refuse to measure the wrong tree (a PYTHONPATH that did not take)."""
    import distcb

    package = os.path.dirname(os.path.abspath(distcb.__file__))
    marker = "core" if tree == "old" else "protocol"
    if not os.path.isdir(os.path.join(package, marker)):
        raise SystemExit(f"--tree {tree}, but `import distcb` loaded {package}")


# ------------------------------------------------------------------ ingest children


def _imports(tree: str) -> tuple[Any, Any]:
    """(Coordinator, Config) of this process's tree."""
    if tree == "old":
        engine, config = _module("distcb.core.coordinator"), _module("distcb.core.config")
    else:
        engine, config = _module("distcb.coordinator.engine"), _module("distcb.protocol.config")
    return engine.Coordinator, config.Config


def _config(tree: str) -> Any:
    _, config_type = _imports(tree)
    # Generous timeouts: on a saturated 2-core machine a heartbeat may come late.
    return config_type(heartbeat_timeout_s=120.0, join_timeout_s=120.0, window_steps=WINDOW_STEPS)


class _Repeat:
    """A script of `length` items, all `item` (no memory per step)."""

    def __init__(self, item: Any, length: int) -> None:
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.item


def child_ingest(tree: str, mode: str, client: str, workers: int, steps: int) -> dict[str, Any]:
    """A coordinator here, `workers` workers in a child process; what the coordinator saw."""
    from distcb.callbacks import Callback

    try:
        from distcb.server import WebSocketServer
    except ImportError:  # a tree from before issue 22, when the server lived in transport/
        from distcb.transport.websocket import WebSocketServer  # type: ignore[no-redef]

    coordinator_type, _ = _imports(tree)
    config = _config(tree)
    this_script = os.path.abspath(__file__)

    class Meter(Callback):
        # Batch hooks: every batch merged and the hook run. A callback that may decide on
        # batch ends turns the window rule on; an observing one lets workers stream.
        decides_on_batch = mode == "deciding"

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.first: tuple[float, float] | None = None
            self.last: tuple[float, float] = (0.0, 0.0)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.last = (time.perf_counter(), time.process_time())
            if self.first is None:
                self.first = self.last
            self.calls += 1

    meter = Meter()
    coordinator = coordinator_type([meter], world_size=workers, config=config)

    async def run() -> dict[str, Any]:
        async with WebSocketServer(coordinator, config=config) as server:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                this_script,
                *("--child", "workers", "--tree", tree, "--mode", mode, "--client", client),
                *(f"--workers={workers}", f"--steps={steps}", f"--address={server.address}"),
                f"--token={server.token}",  # a token may begin with "-"
                stdout=asyncio.subprocess.PIPE,
            )
            job = asyncio.create_task(coordinator.run())
            workers_done = asyncio.create_task(process.communicate())
            await asyncio.wait({job, workers_done}, return_when=asyncio.FIRST_COMPLETED)
            if workers_done.done() and process.returncode != 0:
                job.cancel()  # do not wait out the join timeout
                raise RuntimeError(f"the {tree} workers' process failed ({process.returncode})")
            await job
            out, _ = await workers_done
            if process.returncode != 0:
                raise RuntimeError(f"the {tree} workers' process failed ({process.returncode})")
            return dict(json.loads(out.decode().strip().splitlines()[-1]))

    worker_side = asyncio.run(run())
    expected = steps * INGEST_EPOCHS
    if meter.calls != expected or meter.first is None:
        raise AssertionError(f"{tree}: {meter.calls} batch hooks ran, expected {expected}")
    merged = (meter.calls - 1) * workers  # batch logs merged between the first hook and the last
    wall_s = meter.last[0] - meter.first[0]
    cpu_s = meter.last[1] - meter.first[1]
    return {
        "batch_logs_per_s": merged / wall_s,
        "coordinator_cpu_us_per_log": cpu_s / merged * 1e6,
        "coordinator_cpu_share": cpu_s / wall_s,
        "worker_cpu_us_per_log": worker_side["cpu_s"] / (expected * workers) * 1e6,
        "wall_s": wall_s,
    }


def child_ingest_all(tree: str, client: str) -> dict[str, Any]:
    """Every ingest configuration, one after the other, each with a fresh coordinator."""
    out = {}
    for mode in MODES:
        for workers in INGEST_WORKERS:
            steps = INGEST_BATCH_LOGS // workers // INGEST_EPOCHS
            out[f"{mode}/{workers}"] = child_ingest(tree, mode, client, workers, steps)
    return out


def _window(tree: str, mode: str) -> int | None:
    """The window of steps a worker may run ahead, as the tree's coordinator sets it."""
    if mode == "deciding":
        return WINDOW_STEPS
    return None if tree == "old" else int(_config(tree).max_ahead_steps)


def child_workers(
    tree: str, mode: str, client: str, workers: int, steps: int, address: str, token: str
) -> dict[str, Any]:
    """`workers` workers of this tree in one event loop, over websockets; their CPU time."""
    scripted_worker = _module("distcb.testing").ScriptedWorker
    connect = _module("distcb.transport.websocket").connect
    config = _config(tree)
    wire = Wire(tree)
    batch = {m: 0.25 + 0.1 * i for i, m in enumerate(METRICS)}
    epoch_logs = {m: 0.5 for m in METRICS}
    window = _window(tree, mode)
    chunk = max(1, window // 4) if window else 32  # both trees' workers' framing

    async def scripted(rank: int) -> None:
        script = _Repeat(_Repeat(dict(batch, loss=0.6931471805599453 + rank), steps), INGEST_EPOCHS)
        if tree == "old":  # the old ScriptedWorker sent a frame every `frame_steps` steps
            extra: dict[str, Any] = {"frame_steps": chunk}
        else:  # the new one runs the worker session, which sends every W/4 steps
            extra = {"config": config}
        worker = scripted_worker(
            rank, workers, [epoch_logs] * INGEST_EPOCHS, batch_logs=script, **extra
        )
        connection = await connect(address, token, config=config)
        try:
            await worker.run(connection)
        finally:
            await connection.close()

    def encoded_frames(rank: int) -> list[list[tuple[int, bytes]]]:
        """Per epoch, (last step, bytes) of every frame, encoded before the clock runs."""
        out = []
        for epoch in range(INGEST_EPOCHS):
            entries = [
                (step, dict(batch, loss=0.6931471805599453 + rank), 64.0 * (step + 1))
                for step in range(steps)
            ]
            out.append(
                [
                    (entries[i : i + chunk][-1][0], wire.encode(frame))
                    for i in range(0, steps, chunk)
                    for frame in wire.frames(rank, epoch, entries[i : i + chunk])
                ]
            )
        return out

    async def raw(rank: int) -> None:
        """The protocol at its barest: pre-encoded frames, the window rule, the barriers."""
        frames = encoded[rank]
        connection = await connect(address, token, config=config)
        progress = {"epoch": 0, "processed": -1}
        replies: dict[str, Any] = {}
        changed = asyncio.Event()

        async def read() -> None:
            while True:
                message = await connection.receive()
                if message.type == "progress":
                    progress.update(epoch=message.epoch, processed=message.processed_step)
                elif message.type == "abort":
                    raise RuntimeError(f"rank {rank}: the coordinator aborted: {message.reason}")
                elif message.type != "heartbeat":
                    key = f"{message.type}:{getattr(message, 'epoch', '')}"
                    replies[key] = message
                changed.set()

        async def until(ready: Callable[[], bool]) -> None:
            while not ready():
                if reader.done():
                    reader.result()  # raises what ended it
                    raise RuntimeError(f"rank {rank}: the connection ended")
                changed.clear()
                await changed.wait()

        async def reply(key: str) -> Any:
            await until(lambda: key in replies)
            return replies.pop(key)

        reader = asyncio.create_task(read())
        try:
            await connection.send(wire.join(rank, workers, INGEST_EPOCHS, steps))
            start = await reply("start:")
            if start.ahead_steps != window:
                raise AssertionError(f"rank {rank}: the coordinator's window is not {window}")
            for epoch, epoch_frames in enumerate(frames):
                for last_step, data in epoch_frames:

                    def within(epoch: int = epoch, last_step: int = last_step) -> bool:
                        known = progress["processed"] if progress["epoch"] == epoch else -1
                        return window is None or last_step <= known + window

                    await until(within)
                    await wire.send_raw(connection, data)
                await connection.send(wire.epoch_end(rank, epoch, epoch_logs))
                await reply(f"epoch_reply:{epoch}")
            await connection.send(wire.train_end(rank))
            await reply("train_end_reply:")
            await connection.send(wire.done(rank))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await connection.close()

    async def all_of_them() -> None:
        one = raw if client == "raw" else scripted
        await asyncio.gather(*(one(rank) for rank in range(workers)))

    encoded = {r: encoded_frames(r) for r in range(workers)} if client == "raw" else {}
    started = time.process_time()
    asyncio.run(all_of_them())
    return {"cpu_s": time.process_time() - started}


# ------------------------------------------------------------------ the driver


def _old_tree(path: str | None, scratch: str) -> str:
    if path is not None:
        return path
    archive = subprocess.run(["git", "-C", ROOT, "archive", OLD_COMMIT], capture_output=True)
    if archive.returncode != 0:
        raise RuntimeError(
            f"the tree before issue 11 is commit {OLD_COMMIT}, which `git archive` could not "
            f"read ({archive.stderr.decode().strip()}): run from a full clone, or pass "
            "--old-tree with a checkout of that commit"
        )
    subprocess.run(["tar", "-x", "-C", scratch], input=archive.stdout, check=True)
    return scratch


def _child(tree_path: str, tree: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=tree_path)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args, "--tree", tree],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{tree} child {args} failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def measure(old_tree: str | None = None, client: str = "raw") -> dict[str, Any]:
    """Both trees, interleaved; every round's results and the load average around them."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"old": _old_tree(old_tree, scratch), "new": ROOT}
        load_before = os.getloadavg()
        codec: dict[str, list[dict[str, Any]]] = {t: [] for t in TREES}
        ingest: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in TREES}
        started = time.monotonic()
        for round_ in range(max(CODEC_ROUNDS, INGEST_ROUNDS)):
            order = TREES if round_ % 2 == 0 else TREES[::-1]
            if round_ < CODEC_ROUNDS:
                for tree in order:
                    codec[tree].append(_child(paths[tree], tree, "codec"))
            if round_ >= INGEST_ROUNDS:
                continue
            for tree in order:
                runs = _child(paths[tree], tree, "ingest", "--client", client)
                for config, run in runs.items():
                    ingest[tree].setdefault(config, []).append(run)
        return {
            "codec": codec,
            "ingest": ingest,
            "client": client,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "elapsed_s": round(time.monotonic() - started, 1),
            "cpus": os.cpu_count(),
        }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


INGEST_KEYS = (
    "batch_logs_per_s",
    "coordinator_cpu_us_per_log",
    "coordinator_cpu_share",
    "worker_cpu_us_per_log",
)


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds per tree, and their new/old ratios."""
    codec: dict[str, Any] = {}
    for name in raw["codec"]["old"][0]:
        row: dict[str, Any] = {"batch_logs": raw["codec"]["new"][0][name]["batch_logs"]}
        for tree in TREES:
            rounds = [r[name] for r in raw["codec"][tree]]
            row[tree] = {"bytes": rounds[0]["bytes"]}
            for key in ("encode", "serialize", "decode"):
                if f"{key}_s" in rounds[0]:
                    row[tree][f"{key}_per_s"] = 1 / _median(rounds, f"{key}_s")
        for key in row["new"]:
            row[f"{key}_ratio"] = row["new"][key] / row["old"][key]
        codec[name] = row
    ingest: dict[str, Any] = {}
    for config in raw["ingest"]["old"]:
        row = {}
        for tree in TREES:
            runs = raw["ingest"][tree][config]
            row[tree] = {key: _median(runs, key) for key in INGEST_KEYS}
            rates = [r["batch_logs_per_s"] for r in runs]
            row[tree]["range"] = [min(rates), max(rates)]
        for key in INGEST_KEYS:
            row[f"{key}_ratio"] = row["new"][key] / row["old"][key]
        old, new = ([r["batch_logs_per_s"] for r in raw["ingest"][t][config]] for t in TREES)
        paired = [n / o for o, n in zip(old, new, strict=True)]
        row["round_ratios"] = [min(paired), max(paired)]
        ingest[config] = row
    return {"codec": codec, "ingest": ingest}


def _si(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def _codec_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"### Codec: messages per second, median of {CODEC_ROUNDS} interleaved rounds",
        "",
        "CPU time of a single-threaded child (the wall clock would count the time other "
        "processes held the core). Encode: the sender's values to the frame's bytes; a "
        "batch frame starts from its K logs dicts (4 metrics, full-precision floats, a "
        "sample count): the old worker made a `BatchEntry` per step and cleaned the values "
        "in `to_dict`, the new one cleans them and packs them into columns when its "
        "`BatchBuffer` hands over a frame. Decode: the receiver's bytes to a validated "
        "message (old: UTF-8, `json.loads`, `decode`; new: the msgspec decoder of that "
        "direction, `__post_init__` checks included). Each child first checks that what it "
        "decodes is what was sent. Workers of both trees send a frame every W/4 = 8 steps "
        "when a callback may decide on batch ends.",
        "",
        "| message | bytes old → new | encode/s old | new | new/old | decode/s old | new "
        "| new/old |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in s["codec"].items():
        old, new = row["old"], row["new"]
        lines.append(
            f"| {name} | {old['bytes']} → {new['bytes']} | {_si(old['encode_per_s'])} "
            f"| {_si(new['encode_per_s'])} | **{row['encode_per_s_ratio']:.1f}x** "
            f"| {_si(old['decode_per_s'])} | {_si(new['decode_per_s'])} "
            f"| **{row['decode_per_s_ratio']:.1f}x** |"
        )
    lines += [
        "",
        "Per batch log (every step of every worker: the traffic that dominates). "
        "*Serialize* is the encode of the frame already built (old: `to_dict`, which also "
        "cleans the values, and `json.dumps`; new: msgspec alone), so encode minus "
        "serialize is building the frame.",
        "",
        "| frame | bytes/log old → new | encode logs/s old | new | serialize logs/s old "
        "| new | decode logs/s old | new |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in s["codec"].items():
        k = row["batch_logs"]
        if not k:
            continue
        old, new = row["old"], row["new"]
        lines.append(
            f"| {name} | {old['bytes'] / k:.0f} → {new['bytes'] / k:.0f} "
            f"| {_si(old['encode_per_s'] * k)} | {_si(new['encode_per_s'] * k)} "
            f"| {_si(old['serialize_per_s'] * k)} | {_si(new['serialize_per_s'] * k)} "
            f"| {_si(old['decode_per_s'] * k)} | {_si(new['decode_per_s'] * k)} |"
        )
    return lines


def _ingest_lines(raw: dict[str, Any], s: dict[str, Any]) -> list[str]:
    clients = {
        "raw": "a minimal client of each tree's protocol (its messages, its `connect`; batch "
        "frames encoded by the tree's own code before the clock starts, the window rule "
        "obeyed, the epoch and train-end barriers waited for), so that the workers cost "
        "little and the coordinator is what is measured",
        "scripted": "each tree's own `distcb.testing.ScriptedWorker`",
    }
    lines = [
        f"### Coordinator ingest, median of {INGEST_ROUNDS} interleaved rounds",
        "",
        "One coordinator in its own process behind the tree's websocket server on loopback; "
        f"N workers in a second process, {clients[raw['client']]}. "
        f"{INGEST_BATCH_LOGS} batch logs per run ({INGEST_EPOCHS} epochs of "
        f"{INGEST_BATCH_LOGS} / N / {INGEST_EPOCHS} steps). One coordinator callback with "
        "a batch hook, so every batch is merged and the hook runs. *deciding*: the callback "
        f"may decide on batch ends (the default), so the window rule is on (W = "
        f"{WINDOW_STEPS}): frames of W/4 = 8 steps and a `progress` to every worker every "
        "W/2 merged steps, in both trees. *observing*: `decides_on_batch = False`, workers "
        "stream; each tree frames as its own workers do: the old tree has no bound on how "
        "far a worker runs ahead and sends frames of 32 steps, the new one bounds it by "
        "`Config.max_ahead_steps` = 1024 and sends frames of 1024/4 = 256 steps. Measured "
        "inside the coordinator from its first batch hook to its last: batch logs merged "
        "per second, and the coordinator process's CPU time per batch log (all its "
        "threads: websocket server, decoding, merging, the callback thread).",
        "",
        "| window rule / workers | batch logs/s old | new | new/old | coordinator CPU "
        "µs/log old | new | new/old | CPU share old | new |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, row in s["ingest"].items():
        old, new = row["old"], row["new"]
        mode, workers = config.split("/")
        lines.append(
            f"| {mode}, N={workers} | {_si(old['batch_logs_per_s'])} "
            f"| {_si(new['batch_logs_per_s'])} | **{row['batch_logs_per_s_ratio']:.2f}x** "
            f"| {old['coordinator_cpu_us_per_log']:.1f} "
            f"| {new['coordinator_cpu_us_per_log']:.1f} "
            f"| **{row['coordinator_cpu_us_per_log_ratio']:.2f}x** "
            f"| {old['coordinator_cpu_share']:.2f} | {new['coordinator_cpu_share']:.2f} |"
        )
    ranges = "; ".join(
        f"{config}: old {_si(row['old']['range'][0])}–{_si(row['old']['range'][1])}, "
        f"new {_si(row['new']['range'][0])}–{_si(row['new']['range'][1])} "
        f"(per-round new/old {row['round_ratios'][0]:.2f}–{row['round_ratios'][1]:.2f})"
        for config, row in s["ingest"].items()
    )
    workers_cpu = "; ".join(
        f"{config}: old {row['old']['worker_cpu_us_per_log']:.1f}, "
        f"new {row['new']['worker_cpu_us_per_log']:.1f}"
        for config, row in s["ingest"].items()
    )
    lines += [
        "",
        "*CPU share*: the coordinator's CPU time over its wall time while merging (1.0: one "
        "core busy). With the window rule on, a worker runs at most W steps past the last "
        "`progress` it heard, so the *deciding* rate is bounded by that round trip (two "
        "processes, the callback thread, the scheduler of a shared machine) as much as by "
        "the coordinator's CPU; the CPU per batch log is the steadier comparison there. "
        "Batch logs/s over the rounds (min–max): "
        f"{ranges}. The workers' process, CPU µs per batch log: {workers_cpu}.",
        "",
    ]
    return lines


def section(raw: dict[str, Any]) -> str:
    """The Markdown section of docs/BENCHMARKS.md."""
    s = summarize(raw)
    lines = [
        "## Wire codec and coordinator ingest, before and after issue 11",
        "",
        f"Command: `{COMMAND}` (also run by `make bench`; {raw['elapsed_s']:.0f} s). The old "
        f"tree is commit {OLD_COMMIT} (JSON text frames, a hand-written `to_dict`/`from_dict` "
        "per message), extracted with `git archive`; the new one is this checkout (msgspec "
        "Structs over MessagePack, columnar `BatchFrame`). Each measurement runs in a child "
        "process whose PYTHONPATH is one tree; old and new children alternate, the order "
        "flipping every round. Rates are medians over rounds, new/old the ratio of the "
        "medians. Load average (1, 5, 15 min) before / after: "
        f"{raw['loadavg_before']} / {raw['loadavg_after']} on {raw['cpus']} CPUs shared with "
        "other sessions: compare the ratios, not the absolute rates.",
        "",
        *_codec_lines(s),
        "",
        *_ingest_lines(raw, s),
    ]
    return "\n".join(lines)


def main() -> str:
    """`make bench` (bench/run_all.py): the full run, as a Markdown section."""
    return section(measure())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("codec", "ingest", "workers"))
    parser.add_argument("--tree", choices=TREES)
    parser.add_argument("--client", choices=CLIENTS, default="raw", help="ingest workers")
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--address")
    parser.add_argument("--token")
    parser.add_argument("--old-tree", help=f"a checkout of {OLD_COMMIT} (default: git archive)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    options = parser.parse_args()
    if options.child is not None:
        _check_tree(options.tree)
    if options.child == "codec":
        print(json.dumps(child_codec(options.tree)))
    elif options.child == "ingest":
        print(json.dumps(child_ingest_all(options.tree, options.client)))
    elif options.child == "workers":
        result = child_workers(
            options.tree,
            options.mode,
            options.client,
            options.workers,
            options.steps,
            options.address,
            options.token,
        )
        print(json.dumps(result))
    else:
        raw = measure(options.old_tree, options.client)
        text = json.dumps({"raw": raw, **summarize(raw)}, indent=1) if options.json else None
        print(text or section(raw))
