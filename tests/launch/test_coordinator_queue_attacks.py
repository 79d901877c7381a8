"""Issue 25, item 6: messages queued while a callback holds the coordinator's engine, and
the log lines they cause, replayed against a real `distcb coordinator` subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import time

from distcb.protocol.errors import ConnectionClosed
from distcb.protocol.messages import BatchFrame, Saved, Start
from tests.helpers.coordinator_process import CoordinatorProcess
from tests.launch.test_coordinator_attacks import (
    RSS_MARGIN_MB,
    WAIT_S,
    closed_reason,
    join,
    receive_until,
)

ERROR_TEXT = "e" * 60_000  # a save error near the protocol's text limit


async def test_saved_reports_queued_behind_a_slow_callback_are_bounded_and_logged_rarely(
    tmp_path,
):
    block_dir = tmp_path / "block"
    block_dir.mkdir()
    with CoordinatorProcess(
        tmp_path,
        world_size=1,
        callbacks="tests.helpers.blocking:block_on_first_batch",
        config={"stop_timeout_s": 2.0, "heartbeat_timeout_s": 60.0},
        env={"BLOCK_DIR": str(block_dir)},
    ) as coordinator:
        chief = await join(coordinator, 0, 1, epochs=1)
        await receive_until(chief, Start)
        await chief.send(BatchFrame(rank=0, epoch=0, steps=[0], logs={"loss": [1.0]}))
        deadline = time.monotonic() + WAIT_S
        while not (block_dir / "blocked").exists():  # the engine is in the callback now
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        coordinator.reset_peak()
        baseline_mb = coordinator.rss_mb()
        with contextlib.suppress(ConnectionClosed):  # cut off once over the bound
            for i in range(2000):  # 120 MB of error texts, as in the issue
                await chief.send(Saved(rank=0, filepath=f"/ckpt/{i}.keras", error=ERROR_TEXT))
        reason = await closed_reason(chief)
        peak_mb = coordinator.peak_rss_mb()
        (block_dir / "release").touch()
        exit_code, _ = await asyncio.to_thread(coordinator.wait, WAIT_S)
        await chief.close()
        log = coordinator.stderr()
    assert "Config.max_queued_messages=256" in reason, reason
    assert peak_mb - baseline_mb < RSS_MARGIN_MB, (baseline_mb, peak_mb)
    assert exit_code == 1
    # The 256 that were queued are handled, their warnings rate-limited: one line, then
    # the count of those left out in the next (none within the test's seconds).
    assert log.count("could not save") == 1, log.count("could not save")
    assert len(log) < 200_000, len(log)
