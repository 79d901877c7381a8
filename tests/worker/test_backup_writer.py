"""The backup writer: jobs run in order off the caller's thread, at most one backup in
flight (the next one waits), and a drain waits for everything queued."""

from __future__ import annotations

import threading

import pytest

from distcb.worker.backup_writer import BackupWriter


@pytest.fixture
def writer():
    writer = BackupWriter("test-writer")
    yield writer
    writer.close(10)


def test_jobs_run_in_order_on_the_writers_thread(writer):
    ran: list[tuple[int, str]] = []
    for index in range(5):
        writer.submit(lambda i=index: ran.append((i, threading.current_thread().name)))
    assert writer.drain(10)
    assert ran == [(i, "test-writer") for i in range(5)]
    assert writer.in_flight == 0


def test_a_second_backup_waits_until_the_first_is_persisted(writer):
    release = threading.Event()
    order: list[str] = []
    writer.submit(lambda: (release.wait(10), order.append("first")), backup=True)
    # A weight snapshot's persist does not wait: it only queues behind the backup.
    writer.submit(lambda: order.append("snapshot"))
    second = threading.Thread(
        target=lambda: writer.submit(lambda: order.append("second"), backup=True)
    )
    second.start()
    second.join(0.5)
    assert second.is_alive()  # blocked: one backup in flight
    assert writer.waits == 1
    release.set()
    second.join(10)
    assert not second.is_alive()
    assert writer.drain(10)
    assert order == ["first", "snapshot", "second"]
    assert writer.wait_s > 0


def test_run_now_returns_once_the_job_ran(writer):
    done: list[int] = []
    writer.run_now(lambda: done.append(1), backup=True)
    assert done == [1]


def test_a_job_that_raises_does_not_stop_the_writer(writer, caplog):
    writer.submit(lambda: 1 / 0)
    ran: list[int] = []
    writer.submit(lambda: ran.append(1))
    assert writer.drain(10)
    assert ran == [1]
    assert "a backup job raised" in caplog.text


def test_a_closed_writer_refuses_jobs_and_its_thread_ends():
    writer = BackupWriter("test-writer-closed")
    writer.submit(lambda: None)
    thread = writer._thread
    writer.close(10)
    assert thread is not None
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="is closed"):
        writer.submit(lambda: None)
