"""`ThreadedSession`: a training thread's session, its event loop on an IO thread."""

from __future__ import annotations

import asyncio
import time

from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.messages import EpochEnd, JoinParams, Start
from distcb.testing import ScriptedModel
from distcb.transport import connector_for
from distcb.transport.inproc import InProcessListener
from distcb.worker.session import WorkerSession
from distcb.worker.threaded import ThreadedSession

CONFIG = Config(heartbeat_interval_s=0.1, heartbeat_timeout_s=5.0)


async def test_start_waits_for_an_io_loop_that_is_slow_to_run(monkeypatch):
    # On a loaded machine the IO thread may begin running its loop only after `start` has
    # gone on to use it: `start` must wait for it rather than call it gone.
    original = asyncio.BaseEventLoop.run_forever

    def slow_run_forever(loop):
        time.sleep(0.3)
        return original(loop)

    coordinator = Coordinator(world_size=1, config=CONFIG)
    async with InProcessListener(coordinator.serve) as listener:
        job = asyncio.ensure_future(coordinator.run())
        session = WorkerSession(
            rank=0,
            world_size=1,
            connect=connector_for(listener.address, listener.token, CONFIG),
            config=CONFIG,
            target=ScriptedModel(),
        )
        worker = ThreadedSession(session)

        def train() -> Start:
            monkeypatch.setattr(asyncio.BaseEventLoop, "run_forever", slow_run_forever)
            try:
                start = worker.start(JoinParams(epochs=1))
            finally:
                monkeypatch.setattr(asyncio.BaseEventLoop, "run_forever", original)
            worker.begin_epoch(0)
            worker.end_epoch(EpochEnd(rank=0, epoch=0, logs={"loss": 1.0}))
            worker.end_training()
            worker.finish({})
            return start

        start = await asyncio.to_thread(train)
        history = await asyncio.wait_for(job, 10)
    assert isinstance(start, Start)
    assert history.history["loss"] == [1.0]
