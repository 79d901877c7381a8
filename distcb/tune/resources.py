"""The resources a Tune trial running a distcb job must reserve."""

from __future__ import annotations

from typing import Any


def placement(
    num_workers: int,
    *,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    resources_per_worker: dict[str, float] | None = None,
    trial_cpus: float = 0.5,
    strategy: str = "PACK",
) -> Any:
    """The `tune.PlacementGroupFactory` a trial running `run` must reserve.

    One bundle for the trial process (``trial_cpus``; it only waits), one per
    worker. The coordinator actor reserves nothing. Use with
    ``tune.with_resources(trainable, placement(...))``.
    """
    from ray import tune

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, received {num_workers!r}")
    worker: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        worker["GPU"] = gpus_per_worker
    worker.update(resources_per_worker or {})
    return tune.PlacementGroupFactory(
        [{"CPU": trial_cpus}] + [dict(worker) for _ in range(num_workers)], strategy=strategy
    )
