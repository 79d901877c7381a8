"""`distcb.worker_context()`: who this worker is, from the ``DISTCB_*`` environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from distcb.core.config import Config
from distcb.worker import cluster

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


def worker_context(*, tf_config: str | None = None) -> WorkerContext:
    """This worker's rank, world size, chief flag and coordinator, from the environment.

    The rank and world size come from ``DISTCB_RANK``/``DISTCB_WORLD_SIZE``, else from
    what the launcher sets: a Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``), a
    JobSet, Open MPI or Slurm (see `distcb.worker.cluster`). Outside a distcb job:
    rank 0 of 1. ``DISTCB_ADDRESS`` goes through ``DISTCB_HOST_ALIASES``.

    Args:
        tf_config: "auto" sets ``TF_CONFIG`` for MultiWorkerMirroredStrategy from the
            same environment (a pod's stable DNS names, ``DISTCB_COLLECTIVE_PORT``) when
            it is not set already and the world size is above 1. Call it BEFORE
            ``tf.distribute.MultiWorkerMirroredStrategy()`` is created: the strategy
            reads ``TF_CONFIG`` once, in its constructor. None (default) leaves
            ``TF_CONFIG`` alone.

    Raises:
        ValueError: a malformed variable, a rank outside the world size, an unknown
            `tf_config`, or "auto" where the workers' hosts are unknown.
    """
    if tf_config not in (None, "auto"):
        raise ValueError(f"tf_config must be 'auto' or None, received {tf_config!r}")
    info = cluster.detect(os.environ)
    if tf_config == "auto" and info.world_size > 1 and not os.environ.get("TF_CONFIG"):
        os.environ["TF_CONFIG"] = cluster.tf_config(info)
    raw_config = os.environ.get(ENV_CONFIG)
    config = Config.from_dict(json.loads(raw_config)) if raw_config else Config()
    address = os.environ.get(ENV_ADDRESS)
    if address:
        address = cluster.apply_alias(
            address, cluster.host_aliases(os.environ.get(cluster.ENV_HOST_ALIASES, ""))
        )
    return WorkerContext(
        rank=info.rank,
        world_size=info.world_size,
        address=address,
        token=os.environ.get(ENV_TOKEN),
        config=config,
        run_dir=os.environ.get(ENV_RUN_DIR),
    )
