"""The objects and pod templates every variant of `distcb k8s render` shares: the token
Secret, the state and backups claims, the coordinator's and the workers' pods, and the
failure policy that maps distcb's exit codes onto Kubernetes' actions."""

from __future__ import annotations

from typing import Any

from distcb.launch.k8s.options import (
    COORDINATOR,
    EXIT_BAD_USAGE,
    EXIT_FAILED,
    EXIT_PREEMPTED,
    RUN_DIR,
    STATE_DIR,
    TLS_DIR,
    RenderOptions,
)

Rendered = list[tuple[list[str], dict[str, Any]]]  # each object with the comment lines above it

# ------------------------------------------------------------------ names


def secret_name(o: RenderOptions) -> str:
    return f"{o.name}-token"


def tls_secret_name(o: RenderOptions) -> str:
    return f"{o.name}-tls"


def tls_volume(o: RenderOptions, keys: tuple[str, ...]) -> dict[str, Any]:
    items = [{"key": key, "path": key} for key in keys]
    return {"name": "tls", "secret": {"secretName": tls_secret_name(o), "items": items}}


def state_claim(o: RenderOptions) -> str:
    return f"{o.name}-state"


def backups_claim(o: RenderOptions) -> str:
    return f"{o.name}-backups"


# ------------------------------------------------------------------ shared pieces


def labels(o: RenderOptions, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"{o.name}-{component}", "app.kubernetes.io/part-of": o.name}


def secret(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        "The job's token: every worker connection and /status carry it. Create your own:",
        f"kubectl create secret generic {secret_name(o)} "
        '--from-literal=token="$(openssl rand -hex 32)"',
        "and leave this placeholder out (kubectl apply would overwrite yours).",
    ]
    if o.tls:
        comments += [
            f"The coordinator serves wss:// with the Secret {tls_secret_name(o)} (not rendered):",
            f"kubectl create secret generic {tls_secret_name(o)} --from-file=tls.crt "
            "--from-file=tls.key --from-file=ca.crt",
            "(cert-manager's Certificate makes one with these keys). The certificate must name",
            f"the host the workers dial: {coordinator_host(o)}.",
        ]
    return comments, {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(o), "labels": labels(o, "token")},
        "type": "Opaque",
        "stringData": {"token": "replace-me-with-a-random-token"},
    }


def claim(
    o: RenderOptions, name: str, component: str, access: str, size: str | None = None
) -> dict[str, Any]:
    requests = {"storage": size or o.state_size}
    spec: dict[str, Any] = {"accessModes": [access], "resources": {"requests": requests}}
    if o.storage_class:
        spec["storageClassName"] = o.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels(o, component)},
        "spec": spec,
    }


def state(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        f"The coordinator's state directory ({STATE_DIR}, --state-dir): its journal and the",
        "History survive a restarted coordinator pod, which continues the job from there.",
    ]
    return comments, claim(o, state_claim(o), "state", "ReadWriteOnce")


def backups(o: RenderOptions) -> tuple[list[str], dict[str, Any]]:
    comments = [
        f"The workers' backups ({RUN_DIR}, DISTCB_RUN_DIR): model and optimizer state at every",
        "epoch barrier. Under MultiWorkerMirroredStrategy the chief writes and every worker",
        "(any node, after a restart) reads: it needs a ReadWriteMany storage class (NFS,",
        "Filestore, EFS, ...).",
    ]
    return comments, claim(o, backups_claim(o), "backups", "ReadWriteMany", o.backups_size)


def token_env(o: RenderOptions) -> dict[str, Any]:
    return {
        "name": "DISTCB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret_name(o), "key": "token"}},
    }


def failure_policy(container: str) -> dict[str, Any]:
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


def coordinator_host(o: RenderOptions) -> str:
    if o.variant == "jobset":
        return f"{o.name}-{COORDINATOR}-0-0.{o.name}"
    return f"{o.name}-{COORDINATOR}"


def coordinator_container(o: RenderOptions) -> dict[str, Any]:
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
        "env": [token_env(o)],
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


def coordinator_pod(o: RenderOptions, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",  # podFailurePolicy requires it
            "terminationGracePeriodSeconds": o.grace_period_s,
            "containers": [coordinator_container(o)],
            "volumes": [
                {"name": "state", "persistentVolumeClaim": {"claimName": state_claim(o)}},
                *([tls_volume(o, ("tls.crt", "tls.key"))] if o.tls else []),
            ],
        },
    }


def worker_container(o: RenderOptions, env: list[dict[str, Any]]) -> dict[str, Any]:
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
            token_env(o),
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


def worker_pod(
    o: RenderOptions, labels: dict[str, str], env: list[dict[str, Any]], subdomain: str | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": o.grace_period_s,
        "containers": [worker_container(o, env)],
    }
    spec["volumes"] = [
        {"name": "backups", "persistentVolumeClaim": {"claimName": backups_claim(o)}},
        # the CA only: workers never see the coordinator's key
        *([tls_volume(o, ("ca.crt",))] if o.tls else []),
    ]
    if subdomain:
        spec = {"subdomain": subdomain, **spec}
    return {"metadata": {"labels": labels}, "spec": spec}


def has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
