"""Plain helpers for the callback tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class KerasRun:
    """What a scripted Keras 3 run produced."""

    epochs_run: int
    stopped_epoch: int | None  # the last epoch run when a callback stopped training
    learning_rates: list[float]  # in effect during each epoch run
    weights: float  # marker of the weights the model ends with (the epoch they came from)
    epoch_logs: list[dict[str, Any]] = field(default_factory=list)  # as the chain left them
    final_learning_rate: float = 0.0


def one_worker(epoch_logs: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """`simulate`'s epoch_logs for a single worker."""
    return [[dict(logs)] for logs in epoch_logs]


def losses(values: Sequence[float], key: str = "val_loss") -> list[dict[str, Any]]:
    return [{"loss": 1.0, key: v} for v in values]


def run_distcb(
    callbacks: Sequence[Any],
    epoch_logs: Sequence[dict[str, Any]],
    batch_logs: Sequence[Sequence[dict[str, Any]]] | None = None,
    *,
    learning_rate: float = 0.01,
    directions: dict[str, str] | None = None,
    **params: Any,
) -> Any:
    """One scripted worker under `distcb.testing.simulate`; weights[e] is float(e)."""
    from distcb.testing import simulate

    return simulate(
        callbacks,
        one_worker(epoch_logs),
        batch_logs=None if batch_logs is None else [[[b] for b in e] for e in batch_logs],
        params={
            "learning_rate": learning_rate,
            "directions": {"loss": "min"} if directions is None else directions,
            **params,
        },
        weights=[float(e) for e in range(len(epoch_logs))],
    )
