"""Where this worker stands in its cluster, from what a pod or an HPC job already knows.

`detect(env)` derives the rank, the world size and, where the launcher makes
them known, every worker's collective address; `tf_config(...)` turns that
into the ``TF_CONFIG`` that ``tf.distribute.MultiWorkerMirroredStrategy``
reads when it is created. Pure functions over an environment mapping: no
imports beyond the standard library, nothing read from the network.

Where the rank comes from, first match wins:

==========================  ==================================================
``DISTCB_RANK``             set by ``distcb.run`` (or by hand)
JobSet (``DISTCB_JOBSET_NAME`` present)
                            ``DISTCB_JOB_INDEX * pods_per_job +
                            JOB_COMPLETION_INDEX``; ``pods_per_job`` is the
                            world size over ``DISTCB_JOB_REPLICAS``
``JOB_COMPLETION_INDEX``    a Kubernetes Indexed Job
``OMPI_COMM_WORLD_RANK``    Open MPI's ``mpirun`` (checked before Slurm: under
                            ``sbatch`` + ``mpirun`` every process inherits the
                            batch step's ``SLURM_PROCID=0``)
``SLURM_PROCID``            Slurm's ``srun``
none                        rank 0 of 1 (not in a distributed job)
==========================  ==================================================

The world size is ``DISTCB_WORLD_SIZE`` when set (Kubernetes has no variable
for it), else ``OMPI_COMM_WORLD_SIZE`` / ``SLURM_NTASKS`` with their ranks; a
``DISTCB_WORLD_SIZE`` that contradicts the launcher's is an error.

Worker host names, in rank order, first match wins:

- ``DISTCB_WORKER_HOSTS``: ``host[:port],...`` given explicitly (any launcher;
  the way to go under Open MPI, or Slurm, when you want distcb to write
  ``TF_CONFIG``);
- JobSet: ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``;
  the subdomain is ``DISTCB_SUBDOMAIN``, else the JobSet's name (JobSet's
  default ``network.subdomain``);
- Indexed Job: ``<job>-<index>.<subdomain>``: the job name is
  ``DISTCB_JOB_NAME``, else ``HOSTNAME`` less its ``-<index>`` suffix (an
  Indexed Job's pod host name is ``<job>-<index>``); the subdomain (the
  headless Service, ``spec.subdomain``) is ``DISTCB_SUBDOMAIN``: the downward
  API cannot read it.

Slurm and Open MPI give ranks but no per-rank host list in the environment:
Slurm's ``SLURM_JOB_NODELIST`` is a compressed node list whose expansion (and
the rank-to-node placement, which ``--distribution`` changes) belongs to
``scontrol show hostnames``, so distcb does not guess. Under Slurm, give
``tf.distribute.cluster_resolver.SlurmClusterResolver()`` to the strategy, or
set ``DISTCB_WORKER_HOSTS``.

The collective port is ``DISTCB_COLLECTIVE_PORT`` (default 2222) unless a
host entry carries its own.

``DISTCB_HOST_ALIASES`` is one override for every address distcb dials or
binds (the coordinator's address, the ``TF_CONFIG`` entries, the
coordinator's listening address): ``key=host[:port],...`` where ``key`` is
``name`` (any port) or ``name:port`` (that port only); the value replaces the
host, and the port when it has one. The local pod runs in ``tests/k8s`` map
Kubernetes DNS names to loopback ports with it; /etc/hosts stays untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_COLLECTIVE_PORT",
    "ClusterInfo",
    "apply_alias",
    "detect",
    "host_aliases",
    "indexed_job_hosts",
    "jobset_hosts",
    "split_host_port",
    "tf_config",
    "tf_config_json",
]

ENV_RANK = "DISTCB_RANK"
ENV_WORLD_SIZE = "DISTCB_WORLD_SIZE"
ENV_HOST_ALIASES = "DISTCB_HOST_ALIASES"
ENV_WORKER_HOSTS = "DISTCB_WORKER_HOSTS"
ENV_COLLECTIVE_PORT = "DISTCB_COLLECTIVE_PORT"
ENV_SUBDOMAIN = "DISTCB_SUBDOMAIN"
ENV_JOB_NAME = "DISTCB_JOB_NAME"
ENV_JOBSET_NAME = "DISTCB_JOBSET_NAME"
ENV_REPLICATED_JOB = "DISTCB_REPLICATED_JOB"
ENV_JOB_INDEX = "DISTCB_JOB_INDEX"
ENV_JOB_REPLICAS = "DISTCB_JOB_REPLICAS"
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"

DEFAULT_COLLECTIVE_PORT = 2222


@dataclass(frozen=True)
class ClusterInfo:
    """This worker's place in the cluster.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 is the chief.
        world_size: the number of workers.
        source: what gave the rank: "DISTCB_RANK", "jobset", "JOB_COMPLETION_INDEX",
            "OMPI_COMM_WORLD_RANK", "SLURM_PROCID" or "default".
        workers: every worker's collective "host:port" in rank order, aliases applied;
            empty when the environment does not name the hosts.
        hosts_source: what named them: "DISTCB_WORKER_HOSTS", "jobset", "indexed-job", or
            None with the reason in `hosts_missing`.
        hosts_missing: why `workers` is empty, in words (None when it is not).
    """

    rank: int
    world_size: int
    source: str
    workers: tuple[str, ...] = ()
    hosts_source: str | None = None
    hosts_missing: str | None = None


def detect(env: Mapping[str, str]) -> ClusterInfo:
    """Rank, world size and worker addresses from an environment (``os.environ``).

    Raises:
        ValueError: a variable is not an integer, the rank is outside the world size,
            or two sources disagree.
    """
    rank, world_size, source = _rank_and_size(env)
    aliases = host_aliases(env.get(ENV_HOST_ALIASES, ""))
    port = _int(env, ENV_COLLECTIVE_PORT, DEFAULT_COLLECTIVE_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"{ENV_COLLECTIVE_PORT} must be a TCP port (1-65535), found {port}")
    hosts, hosts_source, missing = _hosts(env, world_size, source)
    workers: tuple[str, ...] = ()
    if hosts:
        if len(hosts) != world_size:
            raise ValueError(
                f"{hosts_source} names {len(hosts)} workers but the world size is {world_size}: "
                f"{', '.join(hosts)}"
            )
        workers = tuple(
            apply_alias(host if _has_port(host) else f"{host}:{port}", aliases) for host in hosts
        )
    return ClusterInfo(rank, world_size, source, workers, hosts_source, missing)


def tf_config(info: ClusterInfo) -> str:
    """The ``TF_CONFIG`` JSON for `info`: every worker, this one's index = its rank.

    Raises:
        ValueError: the worker hosts are unknown (says what to set instead).
    """
    if not info.workers:
        raise ValueError(
            f"cannot build TF_CONFIG for rank {info.rank} of {info.world_size}: "
            f"{info.hosts_missing}. Set {ENV_WORKER_HOSTS}='host:port,...' (rank order), "
            "or set TF_CONFIG yourself, or pass a cluster resolver to the strategy "
            "(Slurm: tf.distribute.cluster_resolver.SlurmClusterResolver())."
        )
    return tf_config_json(info.rank, info.workers)


def tf_config_json(rank: int, workers: Sequence[str]) -> str:
    """``TF_CONFIG`` for MultiWorkerMirroredStrategy: worker `rank` of the cluster `workers`."""
    return json.dumps(
        {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": rank}}
    )


def indexed_job_hosts(job_name: str, subdomain: str, world_size: int) -> list[str]:
    """An Indexed Job's pod names behind its headless Service: ``<job>-<i>.<subdomain>``."""
    return [f"{job_name}-{index}.{subdomain}" for index in range(world_size)]


def jobset_hosts(
    jobset: str, replicated_job: str, replicas: int, pods_per_job: int, subdomain: str
) -> list[str]:
    """A JobSet replicatedJob's pod names, job by job:
    ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``."""
    return [
        f"{jobset}-{replicated_job}-{job}-{pod}.{subdomain}"
        for job in range(replicas)
        for pod in range(pods_per_job)
    ]


def host_aliases(raw: str) -> dict[str, str]:
    """Parse ``DISTCB_HOST_ALIASES``: ``key=host[:port]`` entries separated by commas.

    Raises:
        ValueError: an entry is not ``key=value`` or names a bad port.
    """
    aliases: dict[str, str] = {}
    for entry in raw.replace(";", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(
                f"{ENV_HOST_ALIASES} entries look like 'name=host:port' or "
                f"'name:port=host:port', received {entry!r}"
            )
        for part in (key, value):
            if _has_port(part):
                split_host_port(part)  # validates the port
        aliases[key] = value
    return aliases


def apply_alias(address: str, aliases: Mapping[str, str]) -> str:
    """`address` ("host:port" or "host") through the alias table; unchanged when no key
    matches, and for anything else (a URL, ``ray:<actor>``). A ``host:port`` key wins
    over a bare ``host`` key."""
    if not aliases or "://" in address:
        return address
    exact = aliases.get(address)
    if exact is not None:
        if _has_port(exact) or not _has_port(address):
            return exact
        return f"{exact}:{address.rpartition(':')[2]}"
    if not _has_port(address):
        return address
    host, _, raw_port = address.rpartition(":")
    by_host = aliases.get(host.strip("[]"))
    if by_host is None or not raw_port.isdigit():
        return address
    return by_host if _has_port(by_host) else _join(by_host, int(raw_port))


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` too) as (host, port).

    Raises:
        ValueError: no port, or a port that is not 1-65535.
    """
    host, sep, raw_port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected 'host:port', received {address!r}")
    try:
        port = int(raw_port)
    except ValueError:
        raise ValueError(
            f"expected 'host:port' with a numeric port, received {address!r}"
        ) from None
    if not 0 < port < 65536:
        raise ValueError(f"the port in {address!r} must be 1-65535")
    return host.strip("[]"), port


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _has_port(address: str) -> bool:
    if address.startswith("["):
        return "]:" in address
    return address.count(":") == 1


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, found {raw!r}") from None


def _required_int(env: Mapping[str, str], name: str, why: str) -> int:
    if not env.get(name, "").strip():
        raise ValueError(f"{name} is not set; {why}")
    return _int(env, name, 0)


def _rank_and_size(env: Mapping[str, str]) -> tuple[int, int, str]:
    declared = _int(env, ENV_WORLD_SIZE, 0) if env.get(ENV_WORLD_SIZE, "").strip() else None
    rank: int
    size: int | None = declared
    if env.get(ENV_RANK, "").strip():
        rank, source = _int(env, ENV_RANK, 0), ENV_RANK
    elif env.get(ENV_JOBSET_NAME, "").strip():
        rank, source = _jobset_rank(env, declared), "jobset"
    elif env.get(ENV_COMPLETION_INDEX, "").strip():
        rank, source = _int(env, ENV_COMPLETION_INDEX, 0), ENV_COMPLETION_INDEX
    else:
        rank, source = 0, "default"
        for rank_name, size_name in (
            ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
            ("SLURM_PROCID", "SLURM_NTASKS"),
        ):
            if env.get(rank_name, "").strip():
                rank, source = _int(env, rank_name, 0), rank_name
                launcher_size = _required_int(
                    env, size_name, f"{rank_name} is set, so the world size must be too"
                )
                if declared is not None and declared != launcher_size:
                    raise ValueError(
                        f"{ENV_WORLD_SIZE}={declared} contradicts {size_name}={launcher_size}"
                    )
                size = launcher_size
                break
    world_size = 1 if size is None else size
    if world_size < 1:
        raise ValueError(f"the world size must be >= 1, found {world_size} ({ENV_WORLD_SIZE})")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} (from {source}) is outside {ENV_WORLD_SIZE}={world_size}")
    return rank, world_size, source


def _jobset_rank(env: Mapping[str, str], world_size: int | None) -> int:
    why = "a JobSet worker's rank is <job index> * <pods per job> + <completion index>"
    job_index = _required_int(env, ENV_JOB_INDEX, why)
    pod_index = _required_int(env, ENV_COMPLETION_INDEX, why)
    if job_index == 0:
        return pod_index
    if world_size is None:
        raise ValueError(f"{ENV_WORLD_SIZE} is not set; {why}")
    return job_index * _pods_per_job(env, world_size) + pod_index


def _pods_per_job(env: Mapping[str, str], world_size: int) -> int:
    replicas = _int(env, ENV_JOB_REPLICAS, 1)
    if replicas < 1 or world_size % replicas:
        raise ValueError(
            f"{ENV_WORLD_SIZE}={world_size} is not a multiple of {ENV_JOB_REPLICAS}={replicas} "
            "(every job of a replicatedJob has the same number of pods)"
        )
    return world_size // replicas


def _hosts(
    env: Mapping[str, str], world_size: int, source: str
) -> tuple[list[str], str | None, str | None]:
    explicit = env.get(ENV_WORKER_HOSTS, "").strip()
    if explicit:
        return [h.strip() for h in explicit.split(",") if h.strip()], ENV_WORKER_HOSTS, None
    subdomain = env.get(ENV_SUBDOMAIN, "").strip()
    if source == "jobset":
        jobset = env[ENV_JOBSET_NAME].strip()
        replicated_job = env.get(ENV_REPLICATED_JOB, "").strip()
        if not replicated_job:
            return [], None, f"{ENV_REPLICATED_JOB} is not set (the JobSet's replicatedJob)"
        replicas = _int(env, ENV_JOB_REPLICAS, 1)
        pods = _pods_per_job(env, world_size)
        hosts = jobset_hosts(jobset, replicated_job, replicas, pods, subdomain or jobset)
        return hosts, "jobset", None
    if source == ENV_COMPLETION_INDEX:
        job_name = env.get(ENV_JOB_NAME, "").strip()
        if not job_name:
            hostname, index = env.get("HOSTNAME", ""), env[ENV_COMPLETION_INDEX].strip()
            if hostname.endswith(f"-{index}"):
                job_name = hostname[: -len(index) - 1]
        if not job_name:
            return (
                [],
                None,
                (
                    f"{ENV_JOB_NAME} is not set and HOSTNAME={env.get('HOSTNAME', '')!r} is not "
                    "an Indexed Job pod's '<job>-<index>'"
                ),
            )
        if not subdomain:
            return (
                [],
                None,
                (
                    f"{ENV_SUBDOMAIN} is not set (the headless Service named in the pod's "
                    "spec.subdomain)"
                ),
            )
        return indexed_job_hosts(job_name, subdomain, world_size), "indexed-job", None
    if source in ("OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        return [], None, f"{source} gives ranks but not the other workers' hosts"
    return [], None, f"the rank comes from {source}, which names no hosts"
