"""`distcb.worker_context()`: who this worker is, from the ``DISTCB_*`` environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from distcb.core.config import Config

ENV_ADDRESS = "DISTCB_ADDRESS"
ENV_TOKEN = "DISTCB_TOKEN"
ENV_RANK = "DISTCB_RANK"
ENV_WORLD_SIZE = "DISTCB_WORLD_SIZE"
ENV_CONFIG = "DISTCB_CONFIG"
ENV_RUN_DIR = "DISTCB_RUN_DIR"


@dataclass(frozen=True)
class WorkerContext:
    """This worker's place in the job.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 is the chief.
        world_size: the number of workers.
        address: the coordinator's "host:port".
        token: the job's token.
        config: the job's Config.
        run_dir: the job's run directory (where files go), or None.
    """

    rank: int = 0
    world_size: int = 1
    address: str | None = None
    token: str | None = field(default=None, repr=False)
    config: Config = field(default_factory=Config)
    run_dir: str | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def _int_env(name: str, default: int, fallback: str | None = None) -> int:
    raw = os.environ.get(name) or (os.environ.get(fallback) if fallback else None)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, found {raw!r}") from None


def worker_context() -> WorkerContext:
    """This worker's rank, world size, chief flag and coordinator, from the environment.

    ``DISTCB_RANK`` falls back to Kubernetes' ``JOB_COMPLETION_INDEX`` (Indexed Jobs).
    Outside a distcb job: rank 0 of 1.
    """
    rank = _int_env(ENV_RANK, 0, "JOB_COMPLETION_INDEX")
    world_size = _int_env(ENV_WORLD_SIZE, 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"{ENV_RANK}={rank} is outside {ENV_WORLD_SIZE}={world_size}")
    raw_config = os.environ.get(ENV_CONFIG)
    config = Config.from_dict(json.loads(raw_config)) if raw_config else Config()
    return WorkerContext(
        rank=rank,
        world_size=world_size,
        address=os.environ.get(ENV_ADDRESS),
        token=os.environ.get(ENV_TOKEN),
        config=config,
        run_dir=os.environ.get(ENV_RUN_DIR),
    )
