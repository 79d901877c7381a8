"""The optimizers whose learning rate a callback reads or sets: one, or a MultiOptimizer's."""

from __future__ import annotations

from typing import Any


def optimizers_of(model: Any) -> list[tuple[str | None, Any]]:
    """``[(None, model.optimizer)]``, or ``(name, sub-optimizer)`` pairs for Keras 3's
    ``MultiOptimizer`` (as Keras's callbacks treat it: each sub-optimizer on its own,
    logged as ``learning_rate_<name>``). The coordinator's proxy is a single optimizer."""
    optimizer = model.optimizer
    subs = getattr(optimizer, "optimizers", None)
    if isinstance(subs, list | tuple):  # none until the MultiOptimizer is built, as in Keras
        return [(str(sub.name), sub) for sub in subs]
    return [(None, optimizer)]


def log_name(name: str | None) -> str:
    """The logs key of an optimizer's learning rate."""
    return "learning_rate" if name is None else f"learning_rate_{name}"
