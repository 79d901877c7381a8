"""The trial's calls into the coordinator actor: a slow coordinator loop is not a lost
coordinator while the actor's process answers; an actor that answers nothing is."""

from __future__ import annotations

import asyncio
import threading
import types

import pytest

from distcb.protocol.config import Config
from distcb.protocol.errors import CoordinatorLostError
from distcb.tune.trial import _observe

pytestmark = pytest.mark.slow
CONFIG = Config(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.5, stall_timeout_s=30.0)


def make_actor(ray):
    @ray.remote(num_cpus=0, concurrency_groups={"control": 4})
    class SlowCoordinator:
        """`observe` answers after `delay_s`; `ping` answers unless the process hangs."""

        def __init__(self, delay_s: float, hang: bool):
            self.delay_s = delay_s
            self.hang = hang
            self.release = threading.Event()

        @ray.method(concurrency_group="control")
        async def observe(self, method, *args):
            await asyncio.sleep(self.delay_s)
            return {"kind": method, "args": list(args)}

        @ray.method(concurrency_group="control")
        def ping(self):
            if self.hang:  # a process that is there but answers nothing
                self.release.wait(60)
            return "host"

    return SlowCoordinator


def test_a_slow_coordinator_loop_is_waited_for(ray_cluster):
    actor = make_actor(ray_cluster).remote(delay_s=2.0, hang=False)  # 4x heartbeat_timeout_s
    try:
        job = types.SimpleNamespace(coordinator=actor)
        answer = asyncio.run(_observe(job, CONFIG, "next_event", 0.1))
        assert answer == {"kind": "next_event", "args": [0.1]}
    finally:
        ray_cluster.kill(actor)


def test_an_actor_that_answers_nothing_is_lost(ray_cluster):
    actor = make_actor(ray_cluster).remote(delay_s=60.0, hang=True)
    try:
        job = types.SimpleNamespace(coordinator=actor)
        with pytest.raises(CoordinatorLostError, match="did not answer next_event"):
            asyncio.run(_observe(job, CONFIG, "next_event", 0.1))
    finally:
        ray_cluster.kill(actor)
