"""What `distcb k8s render` is told (`RenderOptions`), checked where it is received, and the
names and exit codes every rendered variant shares."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "COORDINATOR",
    "EXIT_BAD_USAGE",
    "EXIT_FAILED",
    "EXIT_FINISHED",
    "EXIT_PREEMPTED",
    "RESULTS_DIR",
    "RUN_DIR",
    "STATE_DIR",
    "TLS_DIR",
    "VARIANTS",
    "WORKERS",
    "RenderOptions",
    "pod_hostnames",
]

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_BAD_USAGE = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM: also what Kubernetes reports for a process SIGTERM killed

VARIANTS = ("indexed-job", "jobset", "rayjob")
STATE_DIR = "/state"  # the coordinator's state directory: a PersistentVolumeClaim
RUN_DIR = "/distcb-run"  # the workers' DISTCB_RUN_DIR (backups): a ReadWriteMany claim
TLS_DIR = "/tls"  # the coordinator's certificate and key; the workers' CA (a Secret)
RESULTS_DIR = "/results"  # the RayJob's shared Tune storage
COORDINATOR = "coordinator"
WORKERS = "workers"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


@dataclass(frozen=True)
class RenderOptions:
    """What varies between jobs; every other field of the manifests follows from these.

    Args:
        variant: "indexed-job", "jobset" or "rayjob".
        image: the training image (see the Dockerfile).
        name: prefix of every object's name (a DNS-1123 label).
        workers: the world size (training workers).
        worker_command: the workers' container command.
        callbacks: the coordinator's ``--callbacks module:function``.
        port: the coordinator's port. collective_port: the workers' TF collective port.
        state_size: the coordinator state PersistentVolumeClaim's size.
        backups_size: the workers' backups claim's size (ReadWriteMany; the newest three
            epochs' model and optimizer state).
        storage_class: the claims' storage class (None: the cluster's default; the
            backups claim needs one that offers ReadWriteMany).
        max_restarts: Kubernetes' budget for crashes: ``backoffLimit`` of each Job
            (indexed-job) / the JobSet's ``failurePolicy.maxRestarts`` / the RayJob's
            ``backoffLimit``. A preempted pod (143, or DisruptionTarget) does not count.
        max_resumes: distcb's budget: the coordinator's ``--max-restarts``, how many times
            a lost or preempted worker makes the job go on from its last epoch barrier.
            Preemptions count here (and not in ``max_restarts``), so keep it above
            ``max_restarts``; one more loss fails the job (exit 1).
        grace_period_s: ``terminationGracePeriodSeconds``: time a SIGTERM'd pod has to
            back up and stop before it is killed.
        worker_cpu, worker_memory: each worker's requests. gpus_per_worker: its
            ``nvidia.com/gpu`` limit (0: none).
        ray_version: the RayJob's ``rayVersion`` (the image's Ray).
        ray_workers: Ray worker pods in the RayJob.
        tune_args: arguments after ``examples/tune_asha.py`` in the RayJob entrypoint;
            ``--storage /results/tune`` (the rendered shared claim) unless they name one.
        tls: the coordinator serves ``wss://`` with the certificate of the Secret
            ``<name>-tls`` (``tls.crt``, ``tls.key``; you create it) and the workers verify
            it against its ``ca.crt``. False renders ``--insecure``: the token then crosses
            the cluster network in plaintext.
    """

    variant: str
    image: str
    name: str = "distcb"
    workers: int = 2
    worker_command: tuple[str, ...] = ("python", "examples/k8s_train.py")
    callbacks: str = "k8s_train:coordinator_callbacks"
    port: int = 8765
    collective_port: int = 2222
    state_size: str = "1Gi"
    backups_size: str = "10Gi"
    storage_class: str | None = None
    max_restarts: int = 3
    max_resumes: int = 10
    grace_period_s: int = 60
    worker_cpu: str = "1"
    worker_memory: str = "2Gi"
    gpus_per_worker: int = 0
    ray_version: str = "2.60.0"
    ray_workers: int = 2
    tune_args: tuple[str, ...] = field(default=("--epochs", "40"))
    tls: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"variant must be one of {', '.join(VARIANTS)}; received {self.variant!r}"
            )
        if (
            not isinstance(self.image, str)
            or not self.image
            or any(c.isspace() for c in self.image)
        ):
            raise ValueError(
                f"image must be an image reference without spaces, received {self.image!r}"
            )
        if not _DNS_LABEL.fullmatch(self.name):
            raise ValueError(
                f"name must be a DNS-1123 label (lower-case letters, digits and '-', starting and "
                f"ending with a letter or digit), received {self.name!r}"
            )
        for label, value, low in (
            ("workers", self.workers, 1),
            ("port", self.port, 1),
            ("collective_port", self.collective_port, 1),
            ("max_restarts", self.max_restarts, 0),
            ("max_resumes", self.max_resumes, 0),
            ("grace_period_s", self.grace_period_s, 0),
            ("gpus_per_worker", self.gpus_per_worker, 0),
            ("ray_workers", self.ray_workers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an int >= {low}, received {value!r}")
        for label, port in (("port", self.port), ("collective_port", self.collective_port)):
            if port > 65535:
                raise ValueError(f"{label} must be a TCP port (1-65535), received {port}")
        for label, quantity in (
            ("state_size", self.state_size),
            ("backups_size", self.backups_size),
            ("worker_cpu", self.worker_cpu),
            ("worker_memory", self.worker_memory),
        ):
            if not _QUANTITY.fullmatch(quantity):
                raise ValueError(
                    f"{label} must be a Kubernetes quantity such as '500m', '2' or '4Gi', "
                    f"received {quantity!r}"
                )
        if not self.worker_command:
            raise ValueError("worker_command must name a program, received an empty command")
        if ":" not in self.callbacks:
            raise ValueError(
                f"callbacks must look like 'module:function', received {self.callbacks!r}"
            )
        longest = max(pod_hostnames(self), key=len)
        if len(longest) > 63:
            raise ValueError(
                f"name {self.name!r} is too long: the pod host name {longest!r} would exceed "
                "63 characters; choose a shorter name"
            )


def pod_hostnames(o: RenderOptions) -> list[str]:
    """The longest host names the variant gives its pods (each must fit a DNS label)."""
    last = o.workers - 1
    if o.variant == "indexed-job":
        return [f"{o.name}-{WORKERS}-{last}", f"{o.name}-{COORDINATOR}"]
    if o.variant == "jobset":
        return [f"{o.name}-{WORKERS}-0-{last}", f"{o.name}-{COORDINATOR}-0-0"]
    return [f"{o.name}-head"]
