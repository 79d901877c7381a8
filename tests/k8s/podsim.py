"""Run rendered Kubernetes manifests as local processes: each pod's container command runs with
the environment the manifest declares, and a small controller applies the Jobs' and the
JobSet's failure policies to the exit codes.

What it stands in for, and how:

- the Job controller: one pod per completion index (``JOB_COMPLETION_INDEX``, the pod host
  name ``<job>-<index>``, the ``batch.kubernetes.io/*`` labels); ``podFailurePolicy`` rules
  (``onExitCodes``, ``onPodConditions``) then ``backoffLimit``; a failed Job has its other pods
  terminated;
- the JobSet controller: one Job per replicatedJob replica, pod host names
  ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``, the ``jobset.sigs.k8s.io/*``
  labels and the coordinator annotation, ``dependsOn`` (Ready), ``failurePolicy`` rules and
  ``maxRestarts`` (a restart recreates every Job);
- the kubelet: the image's ``WORKDIR`` and ``ENV`` read from the Dockerfile, ``HOSTNAME``,
  ``env`` with ``value`` (``$(VAR)`` expanded), ``secretKeyRef`` and ``fieldRef`` (labels,
  annotations, ``metadata.name``/``namespace``/``uid``, ``spec.nodeName``,
  ``status.podIP``/``hostIP`` = 127.0.0.1); volumes as directories (``emptyDir`` per pod, a
  ``persistentVolumeClaim`` per claim, kept across restarts, a ``secret`` as its keys' files);
  container paths in the command and the environment mapped to them; readiness probes
  (``httpGet``, HTTP or HTTPS) polled; termination as SIGTERM, then SIGKILL after the grace
  period (capped, to keep tests short); exit codes as Kubernetes reports them (128 + signal
  for a process a signal killed);
- cluster DNS: every name a pod dials (a Service's ``<name>:<port>``, a pod's
  ``<hostname>.<subdomain>:<port>``) and every port it listens on (``0.0.0.0:<port>``) is
  mapped to a loopback port of its own through ONE override, ``DISTCB_HOST_ALIASES``, which
  distcb reads itself (`distcb.worker.cluster`); /etc/hosts is never touched.

Not stood in for: scheduling, resource limits, images (the checkout is the image), Services'
load balancing (the first selected pod answers), DNS for names distcb does not dial.
Commands must start with ``python`` or ``distcb``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "default"
LOOPBACK = "127.0.0.1"
POLL_S = 0.05


# ------------------------------------------------------------------ pure policy functions


def k8s_exit_code(returncode: int) -> int:
    """The exit code Kubernetes reports for a process: 128 + N when signal N killed it."""
    return 128 - returncode if returncode < 0 else returncode


def pod_failure_action(
    policy: dict[str, Any] | None, container: str, exit_code: int, conditions: Iterable[str] = ()
) -> str:
    """What a Job's ``podFailurePolicy`` does with a failed pod: the first matching rule's
    action ("FailJob", "Ignore", "Count", "FailIndex"), else "Count" (toward backoffLimit)."""
    conditions = set(conditions)
    for rule in (policy or {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            if on_codes.get("containerName") not in (None, container) or exit_code == 0:
                continue
            inside = exit_code in on_codes["values"]
            if inside == (on_codes["operator"] == "In"):
                return str(rule["action"])
        for condition in rule.get("onPodConditions", []):
            if condition["type"] in conditions and condition.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


def jobset_failure_action(policy: dict[str, Any] | None, replicated_job: str, reason: str) -> str:
    """What a JobSet's ``failurePolicy`` does when one of its Jobs failed for `reason`: the
    first matching rule's action, else "RestartJobSet"."""
    for rule in (policy or {}).get("rules", []):
        targets = rule.get("targetReplicatedJobs") or []
        reasons = rule.get("onJobFailureReasons") or []
        if (not targets or replicated_job in targets) and (not reasons or reason in reasons):
            return str(rule["action"])
    return "RestartJobSet"


def image_config(dockerfile: Path) -> tuple[str, dict[str, str]]:
    """The image's WORKDIR and ENV, read from its Dockerfile (``ENV a=b c=d`` lines)."""
    workdir, env = "/", {}
    for line in dockerfile.read_text().splitlines():
        if not line.upper().startswith(("WORKDIR ", "ENV ")):
            continue
        words = shlex.split(line, comments=True)
        if words[0].upper() == "WORKDIR":
            workdir = words[1]
        elif words[0].upper() == "ENV":
            for word in words[1:]:
                name, _, value = word.partition("=")
                env[name] = value
    return workdir, env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def field_value(pod: Pod, path: str) -> str:
    """A downward-API ``fieldRef`` value for `pod`."""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if found:
        source = pod.labels if found.group(1) == "labels" else pod.annotations
        return source.get(found.group(2), "")
    fixed = {
        "metadata.name": pod.name,
        "metadata.namespace": NAMESPACE,
        "metadata.uid": f"uid-{pod.name}",
        "spec.nodeName": "local-node",
        "spec.serviceAccountName": "default",
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
    }
    if path not in fixed:
        raise ValueError(f"fieldRef {path!r} is not supported by the pod simulator")
    return fixed[path]


# ------------------------------------------------------------------ the objects


@dataclass
class Pod:
    """One pod of a Job: identity, template and its loopback ports."""

    name: str
    job: str
    index: int | None
    hostname: str
    subdomain: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port

    @property
    def container(self) -> dict[str, Any]:
        containers = self.spec["containers"]
        if len(containers) != 1:
            raise ValueError(f"pod {self.name}: the simulator runs one container per pod")
        return containers[0]  # type: ignore[no-any-return]


@dataclass
class Job:
    name: str
    spec: dict[str, Any]
    pods: list[Pod]
    replicated_job: str | None = None
    depends_on: list[str] = field(default_factory=list)  # Jobs that must be Ready first
    state: str = "Pending"  # Pending, Running, Complete, Failed
    reason: str | None = None
    failures: int = 0


@dataclass
class PodRun:
    """One attempt of one pod."""

    pod: Pod
    attempt: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    conditions: set[str] = field(default_factory=set)
    exited_at: float | None = None  # set by a waiter thread the moment the process ends
    exit_code: int | None = None
    action: str | None = None  # Succeeded, FailJob, Ignore, Count, Terminated

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Fault:
    """Send `signal_number` to the pod whose host name is `pod` once its log matches `when_log`;
    ``disruption=True`` also gives the pod the DisruptionTarget condition (an eviction)."""

    pod: str
    signal_number: int
    when_log: str
    disruption: bool = False
    fired_at: float | None = None


@dataclass
class Outcome:
    jobs: dict[str, tuple[str, str | None]]
    runs: list[PodRun]
    ready: dict[str, tuple[float, dict[str, Any]]]  # pod host name -> (when, probe body)
    jobset: tuple[str, int] | None  # (state, restarts)

    def runs_of(self, job: str) -> list[PodRun]:
        return [run for run in self.runs if run.pod.job == job]

    def exits(self, job: str) -> list[tuple[str, int, int | None, str | None]]:
        return [(r.pod.hostname, r.attempt, r.exit_code, r.action) for r in self.runs_of(job)]


class LocalCluster:
    """The manifests' pods as local processes (see the module docstring).

    Args:
        documents: the rendered manifests.
        workdir: where pod directories, volumes and logs go.
        repo_root: the checkout, standing in for the image's WORKDIR.
        dockerfile: the image's Dockerfile (WORKDIR and ENV are read from it).
        grace_cap_s: cap on terminationGracePeriodSeconds.
    """

    def __init__(
        self,
        documents: Sequence[dict[str, Any]],
        workdir: Path,
        *,
        repo_root: Path,
        dockerfile: Path,
        grace_cap_s: float = 5.0,
    ) -> None:
        self.workdir = workdir
        self.repo_root = repo_root
        self.image_workdir, self.image_env = image_config(dockerfile)
        self.grace_cap_s = grace_cap_s
        self.secrets: dict[str, dict[str, str]] = {}
        self.services: list[dict[str, Any]] = []
        self.jobs: dict[str, Job] = {}
        self.jobset: dict[str, Any] | None = None
        self.jobset_state = "Running"
        self.jobset_restarts = 0
        for document in documents:
            kind = document["kind"]
            if kind == "Secret":
                self.secrets[document["metadata"]["name"]] = _secret_data(document)
            elif kind == "Service":
                self.services.append(document)
            elif kind == "Job":
                self._add_job(document["metadata"]["name"], document["spec"], {})
            elif kind == "JobSet":
                self._add_jobset(document)
            elif kind != "PersistentVolumeClaim":
                raise ValueError(f"the pod simulator does not run {kind} objects")
        readiness_jobs = [
            job.name for job in self.jobs.values() if "readinessProbe" in job.pods[0].container
        ]
        if self.jobset is None:  # plain Jobs: the ones without probes wait for the probed ones
            for job in self.jobs.values():
                if job.name not in readiness_jobs:
                    job.depends_on = list(readiness_jobs)
        for job in self.jobs.values():
            for pod in job.pods:
                pod.ports = {
                    p["containerPort"]: _free_port() for p in pod.container.get("ports", [])
                }
        self.runs: list[PodRun] = []
        self.ready: dict[str, tuple[float, dict[str, Any]]] = {}

    # -------------------------------------------------------------- expansion

    def _add_job(self, name: str, spec: dict[str, Any], extra: dict[str, Any]) -> Job:
        template = spec["template"]
        labels = dict(template.get("metadata", {}).get("labels", {}))
        annotations = dict(template.get("metadata", {}).get("annotations", {}))
        labels.update(extra.get("labels", {}))
        annotations.update(extra.get("annotations", {}))
        indexed = spec.get("completionMode") == "Indexed"
        pods = []
        for index in range(spec.get("completions", 1)):
            hostname = f"{name}-{index}"  # Indexed Job (and JobSet) pod host names
            pod_labels = dict(labels, **{"batch.kubernetes.io/job-name": name, "job-name": name})
            pod_annotations = dict(annotations)
            if indexed:
                pod_labels["batch.kubernetes.io/job-completion-index"] = str(index)
                pod_annotations["batch.kubernetes.io/job-completion-index"] = str(index)
            else:
                hostname = f"{name}-local"  # a plain Job's pod: host name = pod name
            pods.append(
                Pod(
                    name=f"{hostname}-local" if indexed else hostname,
                    job=name,
                    index=index if indexed else None,
                    hostname=hostname,
                    subdomain=extra.get("subdomain", template["spec"].get("subdomain")),
                    labels=pod_labels,
                    annotations=pod_annotations,
                    spec=template["spec"],
                )
            )
        job = Job(name, spec, pods, replicated_job=extra.get("replicated_job"))
        self.jobs[name] = job
        return job

    def _add_jobset(self, document: dict[str, Any]) -> None:
        if self.jobset is not None:
            raise ValueError("the pod simulator runs one JobSet at a time")
        self.jobset = document
        jobset = document["metadata"]["name"]
        spec = document["spec"]
        network = spec.get("network", {})
        subdomain = network.get("subdomain") or jobset
        dns = network.get("enableDNSHostnames", True)
        coordinator = spec.get("coordinator")
        annotations: dict[str, str] = {}
        if coordinator:
            annotations["jobset.sigs.k8s.io/coordinator"] = (
                f"{jobset}-{coordinator['replicatedJob']}-{coordinator.get('jobIndex', 0)}-"
                f"{coordinator.get('podIndex', 0)}.{subdomain}"
            )
        for replicated in spec["replicatedJobs"]:
            replicas = replicated.get("replicas", 1)
            for job_index in range(replicas):
                job_name = f"{jobset}-{replicated['name']}-{job_index}"
                job_spec = dict(replicated["template"]["spec"])
                job_spec.setdefault("completionMode", "Indexed")  # JobSet's default
                labels = {
                    "jobset.sigs.k8s.io/jobset-name": jobset,
                    "jobset.sigs.k8s.io/replicatedjob-name": replicated["name"],
                    "jobset.sigs.k8s.io/replicatedjob-replicas": str(replicas),
                    "jobset.sigs.k8s.io/job-index": str(job_index),
                    "jobset.sigs.k8s.io/restart-attempt": "0",
                }
                job = self._add_job(
                    job_name,
                    job_spec,
                    {
                        "labels": labels,
                        "annotations": dict(annotations, **labels),
                        "subdomain": subdomain if dns else None,
                        "replicated_job": replicated["name"],
                    },
                )
                job.depends_on = [
                    f"{jobset}-{d['name']}-{i}"
                    for d in replicated.get("dependsOn", [])
                    for i in range(_replicas(spec, d["name"]))
                ]

    # -------------------------------------------------------------- a pod's process

    def aliases(self, pod: Pod) -> str:
        """``DISTCB_HOST_ALIASES`` for `pod`: the cluster's names, and its own listening ports."""
        entries = []
        for service in self.services:
            if service["spec"].get("clusterIP") == "None":
                continue  # headless: the pods' own names below
            selector = service["spec"].get("selector", {})
            chosen = [p for j in self.jobs.values() for p in j.pods if _selects(selector, p)]
            if not chosen:
                continue
            for port in service["spec"].get("ports", []):  # the first selected pod answers
                target = port.get("targetPort", port["port"])
                if target in chosen[0].ports:
                    local = chosen[0].ports[target]
                    name = service["metadata"]["name"]
                    entries.append(f"{name}:{port['port']}={LOOPBACK}:{local}")
        for job in self.jobs.values():
            for member in job.pods:
                if member.subdomain and _has_dns(self, member):
                    for container_port, local in member.ports.items():
                        entries.append(
                            f"{member.hostname}.{member.subdomain}:{container_port}={LOOPBACK}:{local}"
                        )
        for container_port, local in pod.ports.items():
            entries.append(f"0.0.0.0:{container_port}={LOOPBACK}:{local}")
        return ",".join(entries)

    def paths(self, pod: Pod) -> dict[str, Path]:
        """Container path -> local directory: the image's WORKDIR and the pod's volumes."""
        mapping = {self.image_workdir: self.repo_root}
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                local = self.workdir / "claims" / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume:
                local = self.workdir / "pods" / pod.name / "volumes" / mount["name"]
            elif "secret" in volume:  # its keys as files (only `items`, when listed)
                local = self.workdir / "pods" / pod.name / "volumes" / mount["name"]
                self._write_secret(pod, volume["secret"], local)
            else:
                raise ValueError(f"pod {pod.name}: volume {mount['name']!r} is not simulated")
            local.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = local
        return mapping

    def _write_secret(self, pod: Pod, source: dict[str, Any], local: Path) -> None:
        name = source["secretName"]
        if name not in self.secrets:
            raise ValueError(
                f"pod {pod.name}: volume needs Secret {name}, which the manifests do not define "
                "(ContainerCreating)"
            )
        data = self.secrets[name]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            (local / item["path"]).write_text(data[item["key"]])

    def environment(self, pod: Pod) -> dict[str, str]:
        """The container's environment as the kubelet builds it (plus the DNS override)."""
        container = pod.container
        env: dict[str, str] = dict(self.image_env)
        env["HOSTNAME"] = pod.hostname
        if pod.index is not None:
            env["JOB_COMPLETION_INDEX"] = str(pod.index)
        if "envFrom" in container:
            raise ValueError(f"pod {pod.name}: envFrom is not simulated")
        for item in container.get("env", []):
            env[item["name"]] = self._value(pod, item, env)
        mapping = self.paths(pod)
        env = {name: _map_paths(value, mapping) for name, value in env.items()}
        env["DISTCB_HOST_ALIASES"] = self.aliases(pod)
        # The image has distcb installed; here the checkout stands in for it.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.repo_root), env.get("PYTHONPATH", "")) if p
        )
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        home = self.workdir / "pods" / pod.name / "home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        return env

    def _value(self, pod: Pod, item: dict[str, Any], env: dict[str, str]) -> str:
        if "value" in item:
            return expand(str(item["value"]), env)
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            try:
                return self.secrets[ref["name"]][ref["key"]]
            except KeyError:
                raise ValueError(
                    f"pod {pod.name}: env {item['name']} needs Secret {ref['name']}/{ref['key']}, "
                    "which the manifests do not define (CreateContainerConfigError)"
                ) from None
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"])
        raise ValueError(f"pod {pod.name}: env {item['name']} has an unsupported source {source}")

    def command(self, pod: Pod, env: dict[str, str]) -> tuple[list[str], Path]:
        container = pod.container
        words = [
            expand(w, env) for w in [*container.get("command", []), *container.get("args", [])]
        ]
        if not words:
            raise ValueError(
                f"pod {pod.name}: no command (the image's entrypoint is not simulated)"
            )
        mapping = self.paths(pod)
        words = [_map_paths(w, mapping) for w in words]
        program = {
            "python": [sys.executable],
            "python3": [sys.executable],
            "distcb": [sys.executable, "-m", "distcb"],
        }.get(words[0])
        if program is None:
            raise ValueError(
                f"pod {pod.name}: the simulator runs python or distcb, not {words[0]!r}"
            )
        workdir = container.get("workingDir", self.image_workdir)
        return [*program, *words[1:]], Path(_map_paths(workdir, mapping))

    def start(self, pod: Pod) -> PodRun:
        env = self.environment(pod)
        argv, cwd = self.command(pod, env)
        attempt = sum(1 for run in self.runs if run.pod.name == pod.name)
        log_path = self.workdir / "logs" / f"{pod.name}.{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        run = PodRun(pod, attempt, process, log_path, time.monotonic())
        threading.Thread(target=_reap, args=(run,), daemon=True).start()
        self.runs.append(run)
        return run

    # -------------------------------------------------------------- the controller

    def run(
        self,
        *,
        timeout_s: float,
        faults: Sequence[Fault] = (),
        until: Callable[[LocalCluster], bool] | None = None,
    ) -> Outcome:
        """Start the Jobs in dependency order and act on every exit until all are done,
        `until` holds, or `timeout_s` passes (AssertionError with the logs)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._start_ready_jobs()
            self._poll_readiness()
            self._fire(faults)
            # In the order the processes ended, as a controller watching them would see it.
            ended = [r for r in self.runs if r.exit_code is None and r.exited_at is not None]
            for run in sorted(ended, key=lambda r: r.exited_at or 0.0):
                if run.exit_code is None:  # a Job failing above may have terminated it
                    self._on_exit(run, k8s_exit_code(run.process.returncode))
            if self._finished() or (until is not None and until(self)):
                return self.outcome()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the local job did not finish in {timeout_s} s\n{self.report()}"
                )
            time.sleep(POLL_S)

    def _start_ready_jobs(self) -> None:
        if self.jobset_state != "Running":
            return
        for job in self.jobs.values():
            if job.state == "Pending" and all(self._job_ready(d) for d in job.depends_on):
                job.state = "Running"
                for pod in job.pods:
                    self.start(pod)

    def _job_ready(self, name: str) -> bool:
        job = self.jobs[name]
        return job.state == "Complete" or all(p.hostname in self.ready for p in job.pods)

    def _poll_readiness(self) -> None:
        for run in self.runs:
            pod = run.pod
            probe = pod.container.get("readinessProbe")
            if run.exit_code is not None or probe is None or pod.hostname in self.ready:
                continue
            port = _probe_port(pod, probe["httpGet"]["port"])
            scheme = probe["httpGet"].get("scheme", "HTTP").lower()
            url = f"{scheme}://{LOOPBACK}:{pod.ports[port]}{probe['httpGet']['path']}"
            context = ssl._create_unverified_context()  # the kubelet does not verify either
            try:
                with urllib.request.urlopen(url, timeout=0.5, context=context) as response:
                    body = json.load(response)
                    self.ready[pod.hostname] = (time.monotonic(), body)
            except (OSError, urllib.error.URLError, ValueError):
                pass  # not listening yet, or 503: not ready

    def _fire(self, faults: Sequence[Fault]) -> None:
        for fault in faults:
            if fault.fired_at is not None:
                continue
            live = [r for r in self.runs if r.pod.hostname == fault.pod and r.exit_code is None]
            if live and re.search(fault.when_log, live[-1].log(), re.M):
                if fault.disruption:
                    live[-1].conditions.add("DisruptionTarget")
                live[-1].process.send_signal(fault.signal_number)
                fault.fired_at = time.monotonic()

    def _on_exit(self, run: PodRun, code: int) -> None:
        run.exit_code = code
        job = self.jobs[run.pod.job]
        if code == 0:
            run.action = "Succeeded"
            done = {
                r.pod.name for r in self.runs if r.pod.job == job.name and r.action == "Succeeded"
            }
            if len(done) == len(job.pods):
                job.state = "Complete"
            return
        run.action = pod_failure_action(
            job.spec.get("podFailurePolicy"), run.pod.container["name"], code, run.conditions
        )
        if run.action == "Ignore":
            self.start(run.pod)
        elif run.action == "FailJob":
            self._fail_job(job, "PodFailurePolicy")
        else:
            job.failures += 1
            if job.failures > job.spec.get("backoffLimit", 6):
                self._fail_job(job, "BackoffLimitExceeded")
            else:
                self.start(run.pod)

    def _fail_job(self, job: Job, reason: str) -> None:
        job.state, job.reason = "Failed", reason
        self._terminate([r for r in self.runs if r.pod.job == job.name])
        if self.jobset is None:
            return
        policy = self.jobset["spec"].get("failurePolicy", {})
        action = jobset_failure_action(policy, job.replicated_job or "", reason)
        counted = action == "RestartJobSet"
        if action == "FailJobSet" or (
            counted and self.jobset_restarts >= policy.get("maxRestarts", 0)
        ):
            self.jobset_state = "Failed"
            self._terminate(self.runs)
            return
        self._terminate(self.runs)
        self.jobset_restarts += 1
        for other in self.jobs.values():
            other.state, other.reason, other.failures = "Pending", None, 0
            for pod in other.pods:
                pod.labels["jobset.sigs.k8s.io/restart-attempt"] = str(self.jobset_restarts)
        self.ready.clear()

    def _terminate(self, runs: Iterable[PodRun]) -> None:
        """The kubelet's stop: SIGTERM, the grace period (capped), then SIGKILL."""
        live = [r for r in runs if r.exit_code is None]
        for run in live:
            run.process.send_signal(signal.SIGTERM)
        grace = min(
            [self.grace_cap_s]
            + [float(r.pod.spec.get("terminationGracePeriodSeconds", 30)) for r in live]
        )
        end = time.monotonic() + grace
        for run in live:
            try:
                run.process.wait(max(end - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
            run.exit_code = k8s_exit_code(run.process.returncode)
            run.action = "Terminated"

    def _finished(self) -> bool:
        if self.jobset is not None:
            if self.jobset_state == "Running" and all(
                j.state == "Complete" for j in self.jobs.values()
            ):
                self.jobset_state = "Complete"
            return self.jobset_state != "Running"
        return all(j.state in ("Complete", "Failed") for j in self.jobs.values())

    def outcome(self) -> Outcome:
        jobset = None if self.jobset is None else (self.jobset_state, self.jobset_restarts)
        return Outcome(
            {name: (job.state, job.reason) for name, job in self.jobs.items()},
            list(self.runs),
            dict(self.ready),
            jobset,
        )

    def report(self, tail: int = 3000) -> str:
        parts = []
        for run in self.runs:
            parts.append(
                f"--- {run.pod.name} attempt {run.attempt}: exit {run.exit_code} ({run.action})\n"
                + run.log()[-tail:]
            )
        return "\n".join(parts)

    def close(self) -> None:
        """Kill whatever still runs (the test is over)."""
        for run in self.runs:
            if run.process.poll() is None:
                run.process.kill()
            run.process.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ helpers


def load(path: Path) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [d for d in yaml.safe_load_all(handle) if d]


def _secret_data(document: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in document.get("data", {}).items()}
    data.update(document.get("stringData", {}))
    return data


def _replicas(jobset_spec: dict[str, Any], name: str) -> int:
    for replicated in jobset_spec["replicatedJobs"]:
        if replicated["name"] == name:
            return int(replicated.get("replicas", 1))
    raise ValueError(f"dependsOn names an unknown replicatedJob {name!r}")


def _selects(selector: dict[str, str], pod: Pod) -> bool:
    return bool(selector) and all(pod.labels.get(k) == v for k, v in selector.items())


def _has_dns(cluster: LocalCluster, pod: Pod) -> bool:
    """A pod name resolves when a headless Service named its subdomain selects it, or its
    JobSet publishes DNS host names."""
    if pod.labels.get("jobset.sigs.k8s.io/jobset-name"):
        return True
    return any(
        s["metadata"]["name"] == pod.subdomain
        and s["spec"].get("clusterIP") == "None"
        and _selects(s["spec"].get("selector", {}), pod)
        for s in cluster.services
    )


def _probe_port(pod: Pod, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for declared in pod.container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"pod {pod.name}: probe port {port!r} is not declared")


def _map_paths(text: str, mapping: dict[str, Path]) -> str:
    for container_path in sorted(mapping, key=len, reverse=True):
        if container_path.rstrip("/") == "":
            continue  # WORKDIR / maps nothing
        pattern = r"(^|[=:\s])" + re.escape(container_path.rstrip("/")) + r"(?=/|$|[:\s])"
        text = re.sub(pattern, lambda m, p=container_path: m.group(1) + str(mapping[p]), text)
    return text


def _reap(run: PodRun) -> None:
    run.process.wait()
    run.exited_at = time.monotonic()


_TAKEN: set[int] = set()


def _free_port() -> int:
    """A port free now and below the kernel's ephemeral range, so that no outgoing connection
    (this test's or another process's) is handed it before the pod binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            ephemeral_low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(1000):
        port = random.randrange(10000, max(ephemeral_low, 10001))
        if port in _TAKEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")
