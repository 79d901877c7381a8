"""The ``jobset`` variant: one JobSet with two replicatedJobs, the coordinator and the
workers; the controller makes the headless Service and the pods' DNS names, and starts the
workers once the coordinator is Ready (``dependsOn``)."""

from __future__ import annotations

from typing import Any

from distcb.launch.k8s import objects
from distcb.launch.k8s.objects import Rendered
from distcb.launch.k8s.options import COORDINATOR, WORKERS, RenderOptions


def render(o: RenderOptions) -> Rendered:
    jobset_label = "metadata.labels['jobset.sigs.k8s.io/{}']"
    worker_env = [
        # JobSet writes the coordinator pod's DNS name into this annotation (spec.coordinator).
        objects.field(
            "DISTCB_COORDINATOR_HOST", "metadata.annotations['jobset.sigs.k8s.io/coordinator']"
        ),
        {"name": "DISTCB_ADDRESS", "value": f"$(DISTCB_COORDINATOR_HOST):{o.port}"},
        # rank = job-index * pods per job + JOB_COMPLETION_INDEX; TF_CONFIG names the pods
        # <jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>.
        objects.field("DISTCB_JOBSET_NAME", jobset_label.format("jobset-name")),
        objects.field("DISTCB_REPLICATED_JOB", jobset_label.format("replicatedjob-name")),
        objects.field("DISTCB_JOB_INDEX", jobset_label.format("job-index")),
        objects.field("DISTCB_JOB_REPLICAS", jobset_label.format("replicatedjob-replicas")),
        {"name": "DISTCB_SUBDOMAIN", "value": o.name},
    ]

    def job(pod: dict[str, Any], pods: int, container: str) -> dict[str, Any]:
        return {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": 0,  # any failure not ignored below goes to the JobSet's policy
            "podFailurePolicy": objects.failure_policy(container),
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
                        "spec": job(
                            objects.coordinator_pod(o, objects.labels(o, COORDINATOR)),
                            1,
                            COORDINATOR,
                        )
                    },
                },
                {
                    "name": WORKERS,
                    "replicas": 1,
                    "dependsOn": [{"name": COORDINATOR, "status": "Ready"}],
                    "template": {
                        "spec": job(
                            objects.worker_pod(o, objects.labels(o, WORKERS), worker_env, None),
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
    return [objects.secret(o), objects.state(o), objects.backups(o), (comments, jobset)]
