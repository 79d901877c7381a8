"""Issue 25, items 5 and 7: what decoding a token holder's message may cost the coordinator,
replayed against a real `distcb coordinator` subprocess over real sockets.

Memory is read from /proc (the peak RSS since a reset); the event loop's stalls are
measured by a /healthz poller on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec

from distcb.protocol import close_codes
from distcb.protocol.errors import ConnectionClosed
from distcb.protocol.messages import Abort, Start
from tests.helpers.coordinator_process import CoordinatorProcess, HealthPoller
from tests.launch.test_coordinator_attacks import (
    HEALTH_STALL_S,
    RSS_MARGIN_MB,
    WAIT_S,
    closed_reason,
    heartbeats,
    join,
    receive_until,
)


def empty_maps_frame(rank: int) -> bytes:
    """The issue's repro: one batch log value that is a list of 8M empty maps (8 MB on the
    wire; about 590 MB once decoded)."""
    raw = {"type": "batches", "rank": rank, "epoch": 0, "steps": [0]}
    raw["logs"] = {"loss": [[{}] * 8_000_000]}
    return msgspec.msgpack.encode(raw)


def one_entry_maps_frame(rank: int) -> bytes:
    """The same with maps of one entry each, which no run of equal bytes covers."""
    raw = {"type": "batches", "rank": rank, "epoch": 0, "steps": [0]}
    raw["logs"] = {"loss": [[{"a": 1}] * 2_000_000]}
    return msgspec.msgpack.encode(raw)


def nested(depth: int) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = [value]
    return value


async def test_a_frame_of_millions_of_empty_maps_is_refused_before_it_is_decoded(tmp_path):
    with CoordinatorProcess(
        tmp_path,
        world_size=2,
        callbacks="tests.helpers.attacks:batch_observer",
        config={"stop_timeout_s": 30.0},
    ) as coordinator:
        flooder = await join(coordinator, 0, 2, epochs=2)
        honest = await join(coordinator, 1, 2, epochs=2)
        await receive_until(flooder, Start)
        await receive_until(honest, Start)
        beating = asyncio.create_task(heartbeats(honest))
        coordinator.reset_peak()
        baseline_mb = coordinator.rss_mb()
        with HealthPoller(coordinator.base) as poller:
            for frame in (empty_maps_frame(0), one_entry_maps_frame(0)):
                with contextlib.suppress(ConnectionClosed):  # the first one closes it
                    await flooder._ws.send_bytes(frame)
            reason = await closed_reason(flooder)
            abort = await receive_until(honest, Abort)
            peak_mb = coordinator.peak_rss_mb()
            status = coordinator.get("/status", token=coordinator.token)
        beating.cancel()
        await flooder.close()
        await honest.close()
    assert f"code {close_codes.POLICY_VIOLATION}" in reason, reason
    assert "Config.max_decoded_elements" in abort.reason, abort.reason
    assert "rank 0" in abort.reason, abort.reason
    assert peak_mb - baseline_mb < RSS_MARGIN_MB, (baseline_mb, peak_mb)
    assert poller.worst_s < HEALTH_STALL_S, (poller.worst_s, poller.failures)
    assert status[0] == 200, status  # only that connection was closed: the server serves on


async def test_a_one_entry_map_flood_is_refused_without_stalling_the_loop(tmp_path):
    with CoordinatorProcess(
        tmp_path,
        world_size=2,
        callbacks="tests.helpers.attacks:batch_observer",
        config={"stop_timeout_s": 30.0},
    ) as coordinator:
        flooder = await join(coordinator, 0, 2, epochs=2)
        honest = await join(coordinator, 1, 2, epochs=2)
        await receive_until(flooder, Start)
        await receive_until(honest, Start)
        beating = asyncio.create_task(heartbeats(honest))
        coordinator.reset_peak()
        baseline_mb = coordinator.rss_mb()
        with HealthPoller(coordinator.base) as poller:
            await flooder._ws.send_bytes(one_entry_maps_frame(0))
            reason = await closed_reason(flooder)
            peak_mb = coordinator.peak_rss_mb()
        beating.cancel()
        await flooder.close()
        await honest.close()
    assert "Config.max_decoded_elements" in reason, reason
    assert peak_mb - baseline_mb < RSS_MARGIN_MB, (baseline_mb, peak_mb)
    assert poller.worst_s < HEALTH_STALL_S, (poller.worst_s, poller.failures)


async def test_logs_nested_500_deep_are_refused_and_status_and_events_keep_working(tmp_path):
    with CoordinatorProcess(tmp_path, world_size=2, config={"stop_timeout_s": 30.0}) as coordinator:
        deep = await join(coordinator, 0, 2, epochs=2)
        honest = await join(coordinator, 1, 2, epochs=2)
        await receive_until(deep, Start)
        await receive_until(honest, Start)
        beating = asyncio.create_task(heartbeats(honest))
        raw = {"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {"loss": nested(500)}}
        await deep._ws.send_bytes(msgspec.msgpack.encode(raw))
        reason = await closed_reason(deep)
        status = coordinator.get("/status", token=coordinator.token)
        events = await asyncio.to_thread(first_event, coordinator)
        beating.cancel()
        await deep.close()
        await honest.close()
    assert f"code {close_codes.POLICY_VIOLATION}" in reason, reason
    assert "field logs" in reason, reason
    assert status[0] == 200, status
    assert events.startswith("event: status\ndata: {"), events[:200]


async def test_extras_nested_500_deep_are_refused_naming_the_field(tmp_path):
    with CoordinatorProcess(tmp_path, world_size=1, config={"stop_timeout_s": 5.0}) as (
        coordinator
    ):
        chief = await join(coordinator, 0, 1, epochs=2)
        await receive_until(chief, Start)
        # Typed extras nest a few levels at most: the decoder stops at the first wrong level.
        raw = {"type": "epoch_end", "rank": 0, "epoch": 0, "logs": {"loss": 1.0}}
        raw["extras"] = {"histograms": nested(500)}
        with contextlib.suppress(ConnectionClosed):
            await chief._ws.send_bytes(msgspec.msgpack.encode(raw))
        reason = await closed_reason(chief)
        await chief.close()
        exit_code, _ = await asyncio.to_thread(coordinator.wait, WAIT_S)
    assert "field extras.histograms[0]: Expected `object`, got `array`" in reason, reason
    assert exit_code == 1


def first_event(coordinator: CoordinatorProcess) -> str:
    """The first event of /events (bearer token), read off the stream."""
    import urllib.request

    request = urllib.request.Request(
        coordinator.base + "/events", headers={"Authorization": f"Bearer {coordinator.token}"}
    )
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        data = b""
        while b"event: status" not in data or not data.endswith(b"\n\n"):
            data += response.read1(65536)
    return data.decode()[data.decode().index("event: status") :]
