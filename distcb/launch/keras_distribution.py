"""The environment of a worker on Keras 3's JAX route (``keras_distribution=True``).

Keras 3 trains one model across processes with its JAX backend: each process
calls ``keras.distribution.initialize()``, which starts ``jax.distributed`` from
the ``KERAS_DISTRIBUTION_*`` variables (rank 0 hosts JAX's coordination service
at the job address), and ``DataParallel`` over the global devices
(`distcb.keras.jax_data_parallel`). On CPU, JAX's collectives go through gloo
(``JAX_CPU_COLLECTIVES_IMPLEMENTATION``; the default since jax 0.5.1, set here
for older ones).

A lost process leaves its peers in a failed collective and JAX's coordination
service in an error state that no process recovers from: a restart starts every
process again, with a fresh coordination port (`AttemptPorts`), never the old
service's.
"""

from __future__ import annotations

import os
import socket
import sys

from distcb.keras.data_parallel import ENV_JOB_ADDRESSES, ENV_NUM_PROCESSES, ENV_PROCESS_ID

ENV_BACKEND = "KERAS_BACKEND"
ENV_CPU_COLLECTIVES = "JAX_CPU_COLLECTIVES_IMPLEMENTATION"


def keras_distribution_env(
    rank: int, world_size: int, coordinator_address: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``(variables, defaults)`` for one worker (as `distcb.launch.env.worker_env`):
    the JAX backend and the ``keras.distribution`` coordinates override what the worker
    inherits; gloo CPU collectives only fill in an unset choice.

    Args:
        rank: the worker's rank, JAX's process id (rank 0 hosts the coordination service).
        world_size: how many processes.
        coordinator_address: ``host:port`` where rank 0 serves JAX's coordination service.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, received {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), received {rank!r}")
    if not isinstance(coordinator_address, str) or ":" not in coordinator_address:
        raise ValueError(
            f"coordinator_address must be 'host:port', received {coordinator_address!r}"
        )
    variables = {
        ENV_BACKEND: "jax",
        ENV_JOB_ADDRESSES: coordinator_address,
        ENV_NUM_PROCESSES: str(world_size),
        ENV_PROCESS_ID: str(rank),
    }
    return variables, {ENV_CPU_COLLECTIVES: "gloo"}


class AttemptPorts:
    """One free loopback port per attempt of a job, for JAX's coordination service.

    The processes of an ended attempt may still be dying when the next starts; a fresh
    port keeps the new processes from ever reaching the old service.
    """

    def __init__(self) -> None:
        self._ports: dict[int, int] = {}

    def port(self, attempt: int) -> int:
        if attempt not in self._ports:
            taken = set(self._ports.values())
            port = _free_port()
            while port in taken:  # the kernel may hand a closed port out again
                port = _free_port()
            self._ports[attempt] = port
        return self._ports[attempt]

    def address(self, attempt: int) -> str:
        return f"127.0.0.1:{self.port(attempt)}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exit_past_jax_shutdown(code: int) -> None:
    """End a worker process whose training did not finish (`code` != 0) at once when it
    joined ``jax.distributed``: at exit JAX waits in a shutdown barrier for every process
    of the job, and a peer that died never arrives (the process would sit there until
    JAX's heartbeat timeout, 100 s by default, still connected to the coordinator). The
    attempt is over; everything to report was reported. Returns when JAX is not in use.
    """
    if code == 0 or "jax" not in sys.modules:
        return
    import jax

    if not jax.distributed.is_initialized():
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
