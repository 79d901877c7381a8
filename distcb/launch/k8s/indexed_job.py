"""The ``indexed-job`` variant: a coordinator Job behind a Service, the workers as an
Indexed Job behind a headless Service (a pod's rank is its completion index), the token
Secret and the two claims."""

from __future__ import annotations

from distcb.launch.k8s import objects
from distcb.launch.k8s.objects import Rendered
from distcb.launch.k8s.options import COORDINATOR, WORKERS, RenderOptions


def render(o: RenderOptions) -> Rendered:
    coordinator = f"{o.name}-{COORDINATOR}"
    workers = f"{o.name}-{WORKERS}"
    coordinator_labels = objects.labels(o, COORDINATOR)
    worker_labels = objects.labels(o, WORKERS)
    worker_env = [
        {"name": "DISTCB_ADDRESS", "value": f"{coordinator}:{o.port}"},
        # rank = JOB_COMPLETION_INDEX (set by the Job controller); TF_CONFIG names the pods
        # <job>-<index>.<subdomain>, the headless Service's DNS names.
        objects.field("DISTCB_JOB_NAME", "metadata.labels['batch.kubernetes.io/job-name']"),
        {"name": "DISTCB_SUBDOMAIN", "value": workers},
    ]
    return [
        objects.secret(o),
        objects.state(o),
        objects.backups(o),
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
                    "podFailurePolicy": objects.failure_policy(COORDINATOR),
                    "template": objects.coordinator_pod(o, coordinator_labels),
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
                    "podFailurePolicy": objects.failure_policy("worker"),
                    "template": objects.worker_pod(o, worker_labels, worker_env, workers),
                },
            },
        ),
    ]
