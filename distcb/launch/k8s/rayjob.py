"""The ``rayjob`` variant: a KubeRay RayJob whose entrypoint runs a Ray Tune search with
distcb trials (``examples/tune_asha.py``), and the claim Tune's storage lives on."""

from __future__ import annotations

import shlex
from typing import Any

from distcb.launch.k8s import objects
from distcb.launch.k8s.objects import Rendered
from distcb.launch.k8s.options import RESULTS_DIR, RenderOptions


def render(o: RenderOptions) -> Rendered:
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

    storage = (
        [] if objects.has_flag(o.tune_args, "--storage") else ["--storage", f"{RESULTS_DIR}/tune"]
    )
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
            objects.claim(o, results_claim, "results", "ReadWriteMany"),
        ),
        (
            [
                "A Ray Tune search (ASHA) whose trials are distcb jobs: each trial runs its",
                "workers as Ray actors under one coordinator actor (examples/tune_asha.py).",
            ],
            rayjob,
        ),
    ]
