"""A worker's buffer of batch logs: filled by the training thread, drained into frames.

`on_train_batch_end` only appends here (Keras 3 may even run it on its thread
pool, out of order); the session's IO thread takes the entries that are
ready, in step order, turns framework tensors into floats there (on a GPU
that read is the device sync, and it happens off the training thread), and
packs them into columnar `BatchFrame`s.

No lock: the training thread appends to a deque and sets dict items, the IO
thread pops them; each of those operations is atomic under the GIL.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from distcb.protocol.logs import clean_logs
from distcb.protocol.messages import BatchFrame

_Entry = tuple[Mapping[str, Any], float | None]


class BatchBuffer:
    """Batch logs of the current epoch not sent yet.

    Args:
        rank: the worker's rank (frames carry it).
        max_frame_entries: the most entries one frame holds (`Config.max_frame_entries`).
    """

    def __init__(self, rank: int, max_frame_entries: int):
        self.rank = rank
        self.max_frame_entries = max_frame_entries
        # (epoch, steps begun, step -> (logs, samples) ended), replaced as a whole at each
        # epoch so that the IO thread, which reads it once per take, never mixes epochs.
        self._epoch: tuple[int, collections.deque[int], dict[int, _Entry]] = (
            0,
            collections.deque(),
            {},
        )
        self.frames_made = 0
        self.entries_made = 0

    def begin(self, step: int) -> None:
        """A step began (training thread)."""
        self._epoch[1].append(step)

    def end(self, step: int, logs: Mapping[str, Any], samples: float | None) -> None:
        """A step ended with these logs (training thread, or Keras's batch-end pool)."""
        self._epoch[2][step] = (logs, samples)

    def reset(self, epoch: int) -> None:
        """Epoch `epoch` begins: nothing carries over."""
        self._epoch = (epoch, collections.deque(), {})

    def take_frames(self, *, final: bool = False) -> list[BatchFrame]:
        """Frames of every entry ready to go, in step order.

        A step is ready once every step begun before it has ended. With
        ``steps_per_execution > 1`` the end of the execution begun at b is the ended
        step in ``[b, next begun step)``. With `final` (the epoch's end) entries whose
        begin was never seen go out too.
        """
        entries: list[tuple[int, Mapping[str, Any], float | None]] = []
        epoch, begun, ended = self._epoch
        while begun:
            first = begun[0]
            upper = begun[1] if len(begun) > 1 else None
            candidates = [s for s in list(ended) if s >= first and (upper is None or s < upper)]
            if not candidates:
                break
            step = min(candidates)
            logs, samples = ended.pop(step)
            entries.append((step, logs, samples))
            begun.popleft()
        if final:
            for step in sorted(ended):
                logs, samples = ended.pop(step)
                entries.append((step, logs, samples))
            begun.clear()
        return self._pack(epoch, entries)

    def _pack(
        self, epoch: int, entries: list[tuple[int, Mapping[str, Any], float | None]]
    ) -> list[BatchFrame]:
        frames: list[BatchFrame] = []
        steps: list[int] = []
        samples: list[float | None] = []
        columns: dict[str, list[Any]] = {}

        def flush() -> None:
            if steps:
                frames.append(
                    BatchFrame(
                        rank=self.rank,
                        epoch=epoch,
                        steps=list(steps),
                        logs={k: list(v) for k, v in columns.items()},
                        samples=None if all(s is None for s in samples) else list(samples),
                    )
                )
                steps.clear()
                samples.clear()

        for step, raw_logs, count in entries:
            logs = clean_logs(raw_logs)
            if steps and (logs.keys() != columns.keys() or len(steps) >= self.max_frame_entries):
                flush()
            if not steps:
                columns = {key: [] for key in logs}
            steps.append(step)
            samples.append(count)
            for key, value in logs.items():
                columns[key].append(value)
        flush()
        self.frames_made += len(frames)
        self.entries_made += len(entries)
        return frames
