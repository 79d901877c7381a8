"""What TensorBoard reads back from a log directory: every run's scalar series.

TensorBoard's own loader (`EventAccumulator`) reads a run's event files in name order and
applies what they say about restarts (a ``SessionLog.START`` at a purge step drops the
events at or past it, in every tag), so two log directories that read back the same show
the same curves, whatever files and bytes hold them.
"""

from __future__ import annotations

import os


def read_scalars(log_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """run -> tag -> [(step, value), ...] in the order TensorBoard keeps them (a step seen
    twice stays twice: TensorBoard draws both). An absent directory reads as {}."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    runs: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if not os.path.isdir(log_dir):
        return runs
    for run in sorted(os.listdir(log_dir)):
        path = os.path.join(log_dir, run)
        if not os.path.isdir(path):
            continue
        accumulator = EventAccumulator(path, size_guidance={SCALARS: 0})  # 0: keep every one
        accumulator.Reload()
        tags = accumulator.Tags()[SCALARS]
        runs[run] = {
            tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in sorted(tags)
        }
    return runs
