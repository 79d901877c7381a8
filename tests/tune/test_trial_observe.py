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
# A ping's round trip must fit in heartbeat_timeout_s even on a loaded CI machine (one CI
# run missed 0.5 s), so the slow loop is several timeouts long rather than the timeout short.
CONFIG = Config(heartbeat_interval_s=0.1, heartbeat_timeout_s=1.5, stall_timeout_s=30.0)


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
        def hang_from_now(self):
            self.hang = True

        @ray.method(concurrency_group="control")
        def ping(self):
            if self.hang:  # a process that is there but answers nothing
                self.release.wait(60)
            return "host"

    return SlowCoordinator


def started(ray, actor_class, **kwargs):
    """The actor, once its process runs: the trial only calls a coordinator actor its workers
    already joined through, so the actor's start is not part of what these tests time."""
    actor = actor_class.remote(**kwargs)
    assert ray.get(actor.ping.remote(), timeout=120) == "host"
    return actor


def test_a_slow_coordinator_loop_is_waited_for(ray_cluster):
    actor = started(ray_cluster, make_actor(ray_cluster), delay_s=6.0, hang=False)  # 4 timeouts
    try:
        job = types.SimpleNamespace(coordinator=actor)
        answer = asyncio.run(_observe(job, CONFIG, "next_event", 0.1))
        assert answer == {"kind": "next_event", "args": [0.1]}
    finally:
        ray_cluster.kill(actor)


def test_an_actor_that_answers_nothing_is_lost(ray_cluster):
    actor = started(ray_cluster, make_actor(ray_cluster), delay_s=60.0, hang=False)
    ray_cluster.get(actor.hang_from_now.remote(), timeout=120)
    try:
        job = types.SimpleNamespace(coordinator=actor)
        with pytest.raises(CoordinatorLostError, match="did not answer next_event") as lost:
            asyncio.run(_observe(job, CONFIG, "next_event", 0.1))
        assert "stall_timeout_s" not in str(lost.value)  # found by the ping, not the stall bound
    finally:
        ray_cluster.kill(actor)
