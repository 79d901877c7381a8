"""What one node of `distcb launch` runs (`NodePlan`), and how a node is reached: the
address its workers dial, the free ports of its workers' collectives."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from distcb.protocol.config import Config

__all__ = ["NodePlan", "free_ports", "join_address", "node_host"]


@dataclass(frozen=True)
class NodePlan:
    """What one node's launcher does.

    Attributes:
        command: the worker's command line (``python train.py args...``).
        nproc_per_node: workers on this node (every node has as many).
        nnodes: nodes in the job.
        node_rank: this node (0 runs the coordinator).
        coordinator: ``(host, port)`` the workers and nodes reach the coordinator at; port 0
            picks a free one (one node only).
        bind_host: where node 0 listens (default: the coordinator's host).
        node_host: where the other nodes reach this node's workers (default: the address
            this machine uses towards the coordinator; loopback when that is loopback).
        callbacks: the coordinator's callbacks (node 0).
        config: timeouts and limits; the other nodes take node 0's.
        tf_config: give every worker ``TF_CONFIG`` (MultiWorkerMirroredStrategy).
        keras_distribution: run every worker on Keras 3's JAX backend with its
            ``keras.distribution`` coordinates; JAX's coordination service listens at
            rank 0's collective address.
        threads_per_worker: TensorFlow/OpenMP threads per worker (default: the CPUs / the
            local workers).
        gpus_per_worker: whole GPUs per worker (``CUDA_VISIBLE_DEVICES`` by local rank).
        run_dir: the job's run directory (``DISTCB_RUN_DIR``).
        token: the job's token (None: a random one, one node on loopback only).
        token_generated: the token was made here (node 0 then prints its login link).
        history_path: node 0 writes the History there as JSON.
        tls_cert, tls_key: node 0 serves TLS with this PEM certificate and key.
        tls_ca: the PEM CA every node and worker verifies node 0's certificate against
            (set: they dial https/wss).
        insecure: node 0 may serve plaintext beyond loopback.
        max_restarts: how many times a lost or preempted worker may restart the job from
            its last epoch barrier (one node; needs `run_dir`).
        resume: go on from the journal in ``<run_dir>/state`` (one node; needs `run_dir`).
        progress: node 0 shows the job's progress (`distcb.launch.progress`).
    """

    command: tuple[str, ...]
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    coordinator: tuple[str, int] = ("127.0.0.1", 0)
    bind_host: str | None = None
    node_host: str | None = None
    callbacks: tuple[Any, ...] = field(default=(), repr=False)
    config: Config = field(default_factory=Config)
    tf_config: bool = False
    keras_distribution: bool = False
    threads_per_worker: int | None = None
    gpus_per_worker: int | None = None
    run_dir: str | None = None
    token: str | None = field(default=None, repr=False)
    token_generated: bool = False
    history_path: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    insecure: bool = False
    max_restarts: int = 0
    resume: bool = False
    progress: bool = True

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def coordinator_address(self) -> str:
        return join_address(*self.coordinator)


def join_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct TCP ports free on every interface (for TF collectives)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("", 0))
            sockets.append(sock)
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def node_host(coordinator_host: str, port: int) -> str:
    """The address this machine uses towards the coordinator (so the other nodes can reach
    it on the same network); loopback when the coordinator is on loopback."""
    try:
        if ipaddress.ip_address(coordinator_host).is_loopback:
            return coordinator_host
    except ValueError:
        if coordinator_host == "localhost":
            return "127.0.0.1"
    family = socket.AF_INET6 if ":" in coordinator_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:  # no packet is sent
        probe.connect((coordinator_host, port or 1))
        return str(probe.getsockname()[0])
