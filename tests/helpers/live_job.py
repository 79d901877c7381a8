"""A job that stays alive while a test looks at it: a real Coordinator and its HTTP server,
two scripted workers over websockets, real sinks, on an event loop of its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from distcb.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    RemoteMonitor,
    TensorBoard,
)
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.server import WebSocketServer
from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect

CONFIG = Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=20.0, stop_timeout_s=5.0)
EPOCHS = 8
STEPS = 4
WAIT_S = 30.0


class Gate(Callback):
    """Holds the coordinator's callback thread in `on_epoch_end(at)` until released: the job
    then waits at that epoch's barrier (the event loop, heartbeats and /status go on)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.held = threading.Event()
        self.open = threading.Event()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            self.held.set()
            if not self.open.wait(WAIT_S):
                raise TimeoutError("the test never released the gate")


def epoch_logs(rank: int) -> list[dict[str, float]]:
    return [
        {"loss": 1.0 / (e + 1) + 0.1 * rank, "val_loss": 1.2 / (e + 1) + 0.3 * rank}
        for e in range(EPOCHS)
    ]


def batch_logs(rank: int) -> list[list[dict[str, float]]]:
    return [[{"loss": 1.0 + e + 0.1 * s + rank} for s in range(STEPS)] for e in range(EPOCHS)]


class LiveJob:
    """Epochs 0 .. `hold_at` - 1 run, then the job waits at epoch `hold_at` until `release()`;
    EarlyStopping then stops it after epoch `hold_at` + 1. The server stays up after the job
    ended until `close()`.
    """

    def __init__(self, run_dir: Path, hold_at: int = 3, callbacks: list[Callback] | None = None):
        """`callbacks`, when given, replace the job's usual ones (the gate is added)."""
        self.hold_at = hold_at
        self.gate = Gate(hold_at)
        self.monitor = RemoteMonitor(root="http://127.0.0.1:1")  # set when the server is up
        self.csv = CSVLogger(str(run_dir / "log.csv"))
        self.checkpoint = ModelCheckpoint(str(run_dir / "model-{epoch}.keras"), monitor="val_loss")
        self.tensorboard = TensorBoard(str(run_dir / "tb"), update_freq="batch", write_graph=False)
        self.callbacks = [
            LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)),
            EarlyStopping(monitor="val_loss", min_delta=10.0, patience=hold_at + 1),
            self.gate,
            self.csv,
            self.monitor,
            self.checkpoint,
            self.tensorboard,
        ]
        if callbacks is not None:
            self.callbacks = [*callbacks, self.gate]
        self.address: str | None = None
        self.token: str | None = None
        self.history: Any = None
        self.error: BaseException | None = None
        self.posts = 0
        self._ready = threading.Event()
        self._done = threading.Event()
        self._close: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="live-job", daemon=True)

    def __enter__(self) -> LiveJob:
        self._thread.start()
        if not self._ready.wait(WAIT_S):
            raise TimeoutError("the live job did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.gate.open.set()
        self.close()
        self._thread.join(WAIT_S)

    def release(self) -> None:
        self.gate.open.set()

    def wait_done(self) -> None:
        if not self._done.wait(WAIT_S):
            raise TimeoutError("the job did not end")

    def close(self) -> None:
        """Shut the coordinator's server down (after the job ended)."""
        if self._loop is not None and self._close is not None:
            with contextlib.suppress(RuntimeError):  # closed already
                self._loop.call_soon_threadsafe(self._close.set)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._close = asyncio.Event()
        app = web.Application()

        async def accept(request: web.Request) -> web.Response:
            self.posts += 1
            return web.Response(text="ok")

        app.router.add_post("/publish/epoch/end/", accept)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.monitor.root = f"http://127.0.0.1:{port}"
        coordinator = Coordinator(self.callbacks, world_size=2, config=CONFIG)
        workers = [
            ScriptedWorker(
                rank,
                2,
                epoch_logs(rank),
                batch_logs(rank),
                params={"host": f"scripted-{rank}:{1000 + rank}", "learning_rate": 0.1},
                config=CONFIG,
            )
            for rank in range(2)
        ]
        try:
            async with WebSocketServer(coordinator, config=CONFIG) as server:
                self.address, self.token = server.address, server.token
                tasks = [
                    asyncio.create_task(
                        w.run(await connect(server.address, server.token, config=CONFIG))
                    )
                    for w in workers
                ]
                self._ready.set()
                try:
                    self.history = await coordinator.run()
                except BaseException as exc:
                    self.error = exc
                await asyncio.gather(*tasks, return_exceptions=True)
                self._done.set()
                await self._close.wait()
        finally:
            self._ready.set()
            self._done.set()
            await runner.cleanup()
