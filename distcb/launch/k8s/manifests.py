"""The manifests `distcb k8s render` writes, as plain dicts, from one `RenderOptions`.

Three variants:

- ``indexed-job``: a coordinator Job behind a Service, the workers as an
  Indexed Job behind a headless Service, the token Secret, a
  PersistentVolumeClaim for the coordinator's state directory and a
  ReadWriteMany one for the workers' backups;
- ``jobset``: one JobSet with two replicatedJobs (coordinator, workers); the
  JobSet controller makes the headless Service and the pod DNS names; the
  workers start once the coordinator is Ready (``dependsOn``);
- ``rayjob``: a KubeRay RayJob whose entrypoint runs a Ray Tune search with
  distcb trials (``examples/tune_asha.py``).

The world size is written once here and lands in every field that needs it
(``completions``, ``parallelism``, ``DISTCB_WORLD_SIZE``, ``--world-size``).

Exit codes, and what the failure policies do with them (docs/kubernetes.md):
0 finished (also a coordinated early stop): nothing restarts; 143 preempted
(SIGTERM: the pod was deleted or its node reclaimed): the pod is replaced and
does not count against ``backoffLimit``; 1 failed and 2 bad usage: permanent,
the Job (JobSet) fails at once; anything else (137: OOM-killed or SIGKILL)
counts against ``backoffLimit`` (JobSet: restarts the whole set, up to
``failurePolicy.maxRestarts``).

Exact resume: the coordinator journals every epoch barrier on its state volume
(``--state-dir``) and lets a lost or preempted worker restart the job up to
``max_resumes`` times (its ``--max-restarts``); the workers back up model and
optimizer under ``DISTCB_RUN_DIR``, a claim every worker pod mounts (under
MultiWorkerMirroredStrategy the chief writes, every worker reads).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EXIT_BAD_USAGE",
    "EXIT_FAILED",
    "EXIT_FINISHED",
    "EXIT_PREEMPTED",
    "VARIANTS",
    "RenderOptions",
    "render",
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
        longest = max(_hostnames(self), key=len)
        if len(longest) > 63:
            raise ValueError(
                f"name {self.name!r} is too long: the pod host name {longest!r} would exceed "
                "63 characters; choose a shorter name"
            )


def render(options: RenderOptions) -> list[tuple[list[str], dict[str, Any]]]:
    """The variant's objects, each with the comment lines written above it."""
    if options.variant == "indexed-job":
        return _indexed_job(options)
    if options.variant == "jobset":
        return _jobset(options)
    return _rayjob(options)


# ------------------------------------------------------------------ names


def _hostnames(o: RenderOptions) -> list[str]:
    last = o.workers - 1
    if o.variant == "indexed-job":
        return [f"{o.name}-{WORKERS}-{last}", f"{o.name}-{COORDINATOR}"]
    if o.variant == "jobset":
        return [f"{o.name}-{WORKERS}-0-{last}", f"{o.name}-{COORDINATOR}-0-0"]
    return [f"{o.name}-head"]


def _secret_name(o: RenderOptions) -> str:
    return f"{o.name}-token"


def _tls_secret_name(o: RenderOptions) -> str:
    return f"{o.name}-tls"


def _tls_volume(o: RenderOptions, keys: tuple[str, ...]) -> dict[str, Any]:
    items = [{"key": key, "path": key} for key in keys]
    return {"name": "tls", "secret": {"secretName": _tls_secret_name(o), "items": items}}


def _state_claim(o: RenderOptions) -> str:
    return f"{o.name}-state"


def _backups_claim(o: RenderOptions) -> str:
    return f"{o.name}-backups"


# ------------------------------------------------------------------ shared pieces


def _labels(o: RenderOptions, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"{o.name}-{component}", "app.kubernetes.io/part-of": o.name}


def _secret(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        "The job's token: every worker connection and /status carry it. Create your own:",
        f"kubectl create secret generic {_secret_name(o)} "
        '--from-literal=token="$(openssl rand -hex 32)"',
        "and leave this placeholder out (kubectl apply would overwrite yours).",
    ]
    if o.tls:
        comments += [
            f"The coordinator serves wss:// with the Secret {_tls_secret_name(o)} (not rendered):",
            f"kubectl create secret generic {_tls_secret_name(o)} --from-file=tls.crt "
            "--from-file=tls.key --from-file=ca.crt",
            "(cert-manager's Certificate makes one with these keys). The certificate must name",
            f"the host the workers dial: {_coordinator_host(o)}.",
        ]
    return comments, {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": _secret_name(o), "labels": _labels(o, "token")},
        "type": "Opaque",
        "stringData": {"token": "replace-me-with-a-random-token"},
    }


def _claim(
    o: RenderOptions, name: str, component: str, access: str, size: str | None = None
) -> dict[str, Any]:
    requests = {"storage": size or o.state_size}
    spec: dict[str, Any] = {"accessModes": [access], "resources": {"requests": requests}}
    if o.storage_class:
        spec["storageClassName"] = o.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": _labels(o, component)},
        "spec": spec,
    }


def _state(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        f"The coordinator's state directory ({STATE_DIR}, --state-dir): its journal and the",
        "History survive a restarted coordinator pod, which continues the job from there.",
    ]
    return comments, _claim(o, _state_claim(o), "state", "ReadWriteOnce")


def _backups(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        f"The workers' backups ({RUN_DIR}, DISTCB_RUN_DIR): model and optimizer state at every",
        "epoch barrier. Under MultiWorkerMirroredStrategy the chief writes and every worker",
        "(any node, after a restart) reads: it needs a ReadWriteMany storage class (NFS,",
        "Filestore, EFS, ...).",
    ]
    return comments, _claim(o, _backups_claim(o), "backups", "ReadWriteMany", o.backups_size)


def _token_env(o: RenderOptions) -> dict[str, Any]:
    return {
        "name": "DISTCB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": _secret_name(o), "key": "token"}},
    }


def _failure_policy(container: str) -> dict[str, Any]:
    """podFailurePolicy: 1 and 2 fail the Job; 143 and disruptions replace the pod."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [EXIT_FAILED, EXIT_BAD_USAGE],
                },
            },
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [EXIT_PREEMPTED],
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def _coordinator_host(o: RenderOptions) -> str:
    if o.variant == "jobset":
        return f"{o.name}-{COORDINATOR}-0-0.{o.name}"
    return f"{o.name}-{COORDINATOR}"


def _coordinator_container(o: RenderOptions) -> dict[str, Any]:
    tls = [f"--tls-cert={TLS_DIR}/tls.crt", f"--tls-key={TLS_DIR}/tls.key"]
    scheme = {"scheme": "HTTPS"} if o.tls else {}
    mounts: list[dict[str, Any]] = [{"name": "state", "mountPath": STATE_DIR}]
    if o.tls:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    return {
        "name": COORDINATOR,
        "image": o.image,
        "command": [
            "distcb",
            "coordinator",
            f"--world-size={o.workers}",
            "--host=0.0.0.0",
            f"--port={o.port}",
            f"--callbacks={o.callbacks}",
            f"--state-dir={STATE_DIR}",
            f"--max-restarts={o.max_resumes}",
            f"--history={STATE_DIR}/history.json",
            *(tls if o.tls else ["--insecure"]),
        ],
        "env": [_token_env(o)],
        "ports": [{"name": "distcb", "containerPort": o.port}],
        # Ready = accepting joins (or training); JobSet starts the workers on it.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": o.port, **scheme},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        # Callbacks run on their own thread: /healthz answers during a long callback.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": o.port, **scheme},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "volumeMounts": mounts,
    }


def _coordinator_pod(o: RenderOptions, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",  # podFailurePolicy requires it
            "terminationGracePeriodSeconds": o.grace_period_s,
            "containers": [_coordinator_container(o)],
            "volumes": [
                {"name": "state", "persistentVolumeClaim": {"claimName": _state_claim(o)}},
                *([_tls_volume(o, ("tls.crt", "tls.key"))] if o.tls else []),
            ],
        },
    }


def _worker_container(o: RenderOptions, env: list[dict[str, Any]]) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": o.worker_cpu, "memory": o.worker_memory}}
    if o.gpus_per_worker:
        resources["limits"] = {"nvidia.com/gpu": str(o.gpus_per_worker)}
    return {
        "name": "worker",
        "image": o.image,
        "command": list(o.worker_command),
        "env": [
            *env,
            {"name": "DISTCB_WORLD_SIZE", "value": str(o.workers)},
            _token_env(o),
            {"name": "DISTCB_COLLECTIVE_PORT", "value": str(o.collective_port)},
            {"name": "DISTCB_RUN_DIR", "value": RUN_DIR},
            {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "3"},
            *([{"name": "DISTCB_TLS_CA", "value": f"{TLS_DIR}/ca.crt"}] if o.tls else []),
        ],
        "ports": [{"name": "collective", "containerPort": o.collective_port}],
        "resources": resources,
        "volumeMounts": [
            {"name": "backups", "mountPath": RUN_DIR},
            *([{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if o.tls else []),
        ],
    }


def _worker_pod(
    o: RenderOptions, labels: dict[str, str], env: list[dict[str, Any]], subdomain: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": o.grace_period_s,
        "containers": [_worker_container(o, env)],
    }
    spec["volumes"] = [
        {"name": "backups", "persistentVolumeClaim": {"claimName": _backups_claim(o)}},
        # the CA only: workers never see the coordinator's key
        *([_tls_volume(o, ("ca.crt",))] if o.tls else []),
    ]
    if subdomain:
        spec = {"subdomain": subdomain, **spec}
    return {"metadata": {"labels": labels}, "spec": spec}


def _has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


# ------------------------------------------------------------------ variants


def _indexed_job(o: RenderOptions) -> list[tuple[list[str], dict[str, Any]]]:
    coordinator = f"{o.name}-{COORDINATOR}"
    workers = f"{o.name}-{WORKERS}"
    coordinator_labels = _labels(o, COORDINATOR)
    worker_labels = _labels(o, WORKERS)
    worker_env = [
        {"name": "DISTCB_ADDRESS", "value": f"{coordinator}:{o.port}"},
        # rank = JOB_COMPLETION_INDEX (set by the Job controller); TF_CONFIG names the pods
        # <job>-<index>.<subdomain>, the headless Service's DNS names.
        _field("DISTCB_JOB_NAME", "metadata.labels['batch.kubernetes.io/job-name']"),
        {"name": "DISTCB_SUBDOMAIN", "value": workers},
    ]
    return [
        _secret(o),
        _state(o),
        _backups(o),
        (
            [f"The coordinator's stable address, {coordinator}:{o.port}."],
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": coordinator, "labels": coordinator_labels},
                "spec": {
                    "selector": coordinator_labels,
                    "ports": [{"name": "distcb", "port": o.port, "targetPort": o.port}],
                },
            },
        ),
        (
            [
                "The coordinator: runs the callbacks once for the whole job. Exit 0 when done,",
                "1 when the job failed (permanent); 143 (preempted) restarts it on its state.",
            ],
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": coordinator, "labels": coordinator_labels},
                "spec": {
                    "completions": 1,
                    "parallelism": 1,
                    "backoffLimit": o.max_restarts,
                    "podFailurePolicy": _failure_policy(COORDINATOR),
                    "template": _coordinator_pod(o, coordinator_labels),
                },
            },
        ),
        (
            [
                "Stable DNS names for the workers: <job>-<index>." + workers,
                "(TF_CONFIG for MultiWorkerMirroredStrategy).",
            ],
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": workers, "labels": worker_labels},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "selector": worker_labels,
                    "ports": [{"name": "collective", "port": o.collective_port}],
                },
            },
        ),
        (
            [
                f"The workers: an Indexed Job of {o.workers}; a pod's rank = its completion index.",
                "Exit 0 finished; 143 preempted (pod replaced, not counted); 1 or 2 fail the Job.",
            ],
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": workers, "labels": worker_labels},
                "spec": {
                    "completionMode": "Indexed",
                    "completions": o.workers,
                    "parallelism": o.workers,
                    "backoffLimit": o.max_restarts,
                    "podFailurePolicy": _failure_policy("worker"),
                    "template": _worker_pod(o, worker_labels, worker_env, workers),
                },
            },
        ),
    ]


def _jobset(o: RenderOptions) -> list[tuple[list[str], dict[str, Any]]]:
    jobset_label = "metadata.labels['jobset.sigs.k8s.io/{}']"
    worker_env = [
        # JobSet writes the coordinator pod's DNS name into this annotation (spec.coordinator).
        _field("DISTCB_COORDINATOR_HOST", "metadata.annotations['jobset.sigs.k8s.io/coordinator']"),
        {"name": "DISTCB_ADDRESS", "value": f"$(DISTCB_COORDINATOR_HOST):{o.port}"},
        # rank = job-index * pods per job + JOB_COMPLETION_INDEX; TF_CONFIG names the pods
        # <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>.
        _field("DISTCB_JOBSET_NAME", jobset_label.format("jobset-name")),
        _field("DISTCB_REPLICATED_JOB", jobset_label.format("replicatedjob-name")),
        _field("DISTCB_JOB_INDEX", jobset_label.format("job-index")),
        _field("DISTCB_JOB_REPLICAS", jobset_label.format("replicatedjob-replicas")),
        {"name": "DISTCB_SUBDOMAIN", "value": o.name},
    ]

    def job(pod: dict[str, Any], pods: int, container: str) -> dict[str, Any]:
        return {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": 0,  # any failure not ignored below goes to the JobSet's policy
            "podFailurePolicy": _failure_policy(container),
            "template": pod,
        }

    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": o.name, "labels": {"app.kubernetes.io/part-of": o.name}},
        "spec": {
            "network": {
                "enableDNSHostnames": True,
                "subdomain": o.name,
                "publishNotReadyAddresses": True,
            },
            "coordinator": {"replicatedJob": COORDINATOR, "jobIndex": 0, "podIndex": 0},
            "failurePolicy": {
                "maxRestarts": o.max_restarts,
                "restartStrategy": "Recreate",
                "rules": [
                    {
                        # exit 1 or 2 (podFailurePolicy FailJob): a bug or a bad argument
                        "name": "failOnPermanentExit",
                        "action": "FailJobSet",
                        "onJobFailureReasons": ["PodFailurePolicy"],
                    },
                    {
                        # anything else that failed a Job (137: OOM-killed, SIGKILL): restart
                        # every Job; the coordinator resumes from its state directory
                        "name": "restartOnCrash",
                        "action": "RestartJobSet",
                        "onJobFailureReasons": ["BackoffLimitExceeded"],
                    },
                ],
            },
            "replicatedJobs": [
                {
                    "name": COORDINATOR,
                    "replicas": 1,
                    "template": {
                        "spec": job(_coordinator_pod(o, _labels(o, COORDINATOR)), 1, COORDINATOR)
                    },
                },
                {
                    "name": WORKERS,
                    "replicas": 1,
                    "dependsOn": [{"name": COORDINATOR, "status": "Ready"}],
                    "template": {
                        "spec": job(
                            _worker_pod(o, _labels(o, WORKERS), worker_env, None),
                            o.workers,
                            "worker",
                        )
                    },
                },
            ],
        },
    }
    comments = [
        f"One JobSet: the coordinator, then {o.workers} workers once it is Ready (takes joins).",
        f"Pods are <name>-<replicatedJob>-<jobIndex>-<podIndex>.{o.name}. Exit 0 finished;",
        "143 preempted (pod replaced); 1 or 2 fail the JobSet; other failures restart it",
        f"(up to {o.max_restarts} times).",
    ]
    return [_secret(o), _state(o), _backups(o), (comments, jobset)]


def _rayjob(o: RenderOptions) -> list[tuple[list[str], dict[str, Any]]]:
    results_claim = f"{o.name}-results"

    def pod(container_name: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": container_name,
            "image": o.image,
            "resources": {
                "requests": {"cpu": o.worker_cpu, "memory": o.worker_memory},
                "limits": {"cpu": o.worker_cpu, "memory": o.worker_memory},
            },
            "volumeMounts": [{"name": "results", "mountPath": RESULTS_DIR}],
        }
        if ports:
            container["ports"] = ports
        if o.gpus_per_worker:
            container["resources"]["limits"]["nvidia.com/gpu"] = str(o.gpus_per_worker)
        return {
            "spec": {
                "containers": [container],
                "volumes": [
                    {"name": "results", "persistentVolumeClaim": {"claimName": results_claim}}
                ],
            }
        }

    storage = [] if _has_flag(o.tune_args, "--storage") else ["--storage", f"{RESULTS_DIR}/tune"]
    entrypoint = shlex.join(["python", "/app/examples/tune_asha.py", *o.tune_args, *storage])
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": o.name, "labels": {"app.kubernetes.io/part-of": o.name}},
        "spec": {
            "entrypoint": entrypoint,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": o.max_restarts,
            "rayClusterSpec": {
                "rayVersion": o.ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},
                    "template": pod(
                        "ray-head",
                        [
                            {"name": "gcs-server", "containerPort": 6379},
                            {"name": "dashboard", "containerPort": 8265},
                            {"name": "client", "containerPort": 10001},
                        ],
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "trials",
                        "replicas": o.ray_workers,
                        "minReplicas": o.ray_workers,
                        "maxReplicas": o.ray_workers,
                        "rayStartParams": {},
                        "template": pod("ray-worker", []),
                    }
                ],
            },
        },
    }
    return [
        (
            [
                f"Tune's storage ({RESULTS_DIR}/tune), shared by the head and every Ray worker:",
                "it needs a ReadWriteMany storage class (NFS, Filestore, EFS, ...), or pass an",
                "s3:// or gs:// URI as --storage instead.",
            ],
            _claim(o, results_claim, "results", "ReadWriteMany"),
        ),
        (
            [
                "A Ray Tune search (ASHA) whose trials are distcb jobs: each trial runs its",
                "workers as Ray actors under one coordinator actor (examples/tune_asha.py).",
            ],
            rayjob,
        ),
    ]
