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

from distcb.protocol.logs import clean_value
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
            entry = ended.pop(first, None)  # the usual case: the step begun at `first` ended
            if entry is not None:
                step = first
            else:  # steps_per_execution > 1: its end is the ended step in [first, next begun)
                upper = begun[1] if len(begun) > 1 else None
                # list(): the training thread may add entries while this thread reads.
                candidates = [s for s in list(ended) if s >= first and (upper is None or s < upper)]
                if not candidates:
                    break
                step = min(candidates)
                entry = ended.pop(step)
            entries.append((step, entry[0], entry[1]))
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

        limit = self.max_frame_entries
        for step, raw_logs, count in entries:
            if not all(type(key) is str for key in raw_logs):
                raw_logs = {str(key): value for key, value in raw_logs.items()}
            if steps and (raw_logs.keys() != columns.keys() or len(steps) >= limit):
                flush()
            if not steps:
                columns = {key: [] for key in raw_logs}
            steps.append(step)
            samples.append(count)
            for key, value in raw_logs.items():
                # Keras 3 hands floats: they go as they are; tensors and numpy values are
                # read here, on this (the IO) thread.
                columns[key].append(value if type(value) is float else clean_value(value))
        flush()
        self.frames_made += len(frames)
        self.entries_made += len(entries)
        return frames
