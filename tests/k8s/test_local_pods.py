"""The rendered manifests, run: every pod's container command as a local process with the
environment its manifest declares (tests/k8s/podsim.py), synchronous tf_keras workers under
MultiWorkerMirroredStrategy with the TF_CONFIG built inside the pod, and the failure policies
applied to what the processes exit with."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from podsim import Fault, LocalCluster, Outcome, load

from distcb.launch.k8s.manifests import RenderOptions, render
from tests.helpers.pki import make_ca, make_server_cert

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/distcb-train:latest"
RESULT_PREFIX = "k8s_train result "  # examples/k8s_train.py's last line
TIMEOUT_S = 240
# A fault fires once rank 1 has finished epoch 2 (or any later one: a log line that another
# writer's output garbled must not let the run finish without its fault).
LATE_EPOCH = r"rank 1: epoch ([2-9]|\d\d+) done"


@pytest.fixture(scope="module")
def reference() -> list[float]:
    """Plain tf_keras, one process, the full batch: the losses the job must reproduce."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "k8s" / "reference_fit.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["loss"]


def tls_secret(tmp_path: Path, name: str = "distcb") -> dict:
    """The Secret ``<name>-tls`` the manifests mount, as `kubectl create secret` makes it,
    with a CA and a coordinator certificate made here (the workers dial it on 127.0.0.1)."""
    directory = tmp_path / "pki"
    directory.mkdir(exist_ok=True)
    ca, ca_key, ca_name = make_ca(directory, "cluster-ca")
    cert, key = make_server_cert(directory, ca_key, ca_name, (f"{name}-coordinator",))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-tls"},
        "stringData": {
            "tls.crt": cert.read_text(),
            "tls.key": key.read_text(),
            "ca.crt": ca.read_text(),
        },
    }


def cluster_for(documents, tmp_path: Path) -> LocalCluster:
    documents = [*documents, tls_secret(tmp_path)]
    return LocalCluster(documents, tmp_path, repo_root=ROOT, dockerfile=ROOT / "Dockerfile")


def history_of(tmp_path: Path) -> dict:
    """The History the coordinator wrote to its state claim."""
    return json.loads((tmp_path / "claims" / "distcb-state" / "history.json").read_text())


@dataclass
class Completed:
    """One run of a checked-in manifest, to completion, without a fault."""

    cluster: LocalCluster
    outcome: Outcome
    report: str
    tmp_path: Path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Callable[[str], Completed]:
    """The checked-in `variant` run once per module: the synchronous-job test checks it, the
    fault tests compare their resumed jobs with it."""
    runs: dict[str, Completed] = {}

    def run(variant: str) -> Completed:
        if variant not in runs:
            tmp_path = tmp_path_factory.mktemp(variant)
            with cluster_for(load(ROOT / "k8s" / f"{variant}.yaml"), tmp_path) as cluster:
                outcome = cluster.run(timeout_s=TIMEOUT_S)
                runs[variant] = Completed(cluster, outcome, cluster.report(), tmp_path)
        return runs[variant]

    return run


def rendered(variant: str, **options) -> list[dict]:
    return [doc for _, doc in render(RenderOptions(variant=variant, image=IMAGE, **options))]


def worker_results(outcome: Outcome, job: str, attempt: int | None = None) -> list[dict]:
    """What examples/k8s_train.py printed in each worker pod (of one `attempt`)."""
    results = []
    for run in outcome.runs_of(job):
        if attempt is not None and run.attempt != attempt:
            continue
        lines = [x for x in run.log().splitlines() if x.startswith(RESULT_PREFIX)]
        assert len(lines) == 1, run.log()[-3000:]
        results.append(json.loads(lines[0][len(RESULT_PREFIX) :]))
    return sorted(results, key=lambda r: r["rank"])


VARIANTS = {
    # variant: (coordinator Job, workers Job, the worker pods' DNS names in TF_CONFIG)
    "indexed-job": (
        "distcb-coordinator",
        "distcb-workers",
        ["distcb-workers-0.distcb-workers", "distcb-workers-1.distcb-workers"],
    ),
    "jobset": (
        "distcb-coordinator-0",
        "distcb-workers-0",
        ["distcb-workers-0-0.distcb", "distcb-workers-0-1.distcb"],
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_checked_in_manifests_run_a_synchronous_job_to_completion(
    variant, uninterrupted, reference
):
    coordinator_job, workers_job, dns_names = VARIANTS[variant]
    run = uninterrupted(variant)
    cluster, outcome, report = run.cluster, run.outcome, run.report
    worker_pods = cluster.jobs[workers_job].pods
    assert outcome.jobs == {coordinator_job: ("Complete", None), workers_job: ("Complete", None)}
    if variant == "jobset":
        assert outcome.jobset == ("Complete", 0)
    # Every pod ran once and exited 0, the workers after a coordinated early stop.
    assert sorted(code for _, _, code, _ in outcome.exits(workers_job)) == [0, 0], report
    assert [code for _, _, code, _ in outcome.exits(coordinator_job)] == [0], report

    # The readiness probe answered "accepting joins" before any worker started.
    [(ready_at, body)] = outcome.ready.values()
    assert body == {"ready": True, "phase": "joining"}
    assert all(ready_at < run.started_at for run in outcome.runs_of(workers_job))

    # The coordinator wrote its History on its state volume; it is plain Keras's.
    losses = history_of(run.tmp_path)["history"]["loss"]
    assert len(losses) == len(reference) < 60, "EarlyStopping must stop before --epochs"
    assert losses == pytest.approx(reference, rel=1e-5, abs=1e-6)

    results = worker_results(outcome, workers_job)
    assert [r["rank"] for r in results] == [0, 1]
    # TF_CONFIG named the pods by the variant's DNS scheme; the alias table took those names
    # (and only those) to the worker pods' ports.
    expected = [f"127.0.0.1:{pod.ports[2222]}" for pod in worker_pods]
    assert all(r["cluster"] == {"worker": expected} for r in results)
    aliases = dict(e.split("=") for e in cluster.aliases(worker_pods[0]).split(","))
    assert [aliases[f"{name}:2222"] for name in dns_names] == expected
    # Each worker read its own half of the data, and the two halves are the data set.
    shards = [set(r["shard"]) for r in results]
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == set(range(30))
    assert all(len(s) == 15 for s in shards)
    # One model: gradients were all-reduced, so both ranks end with the same weights and
    # saw the same (global) loss every epoch.
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert results[0]["loss"] == results[1]["loss"] == pytest.approx(losses, rel=1e-6)
    assert [r["resumed_after"] for r in results] == [None, None]
    # The chief backed up every epoch on the workers' shared claim (the newest three kept).
    backups = tmp_path_backups(run.tmp_path)
    assert backups == [len(losses) - 3, len(losses) - 2, len(losses) - 1], backups


def tmp_path_backups(tmp_path: Path) -> list[int]:
    """The epochs of the chief's backups on the workers' claim (DISTCB_RUN_DIR)."""
    ranks = tmp_path / "claims" / "distcb-backups" / "backups"
    assert sorted(p.name for p in ranks.iterdir()) == ["rank-0"]  # the chief alone writes
    return sorted(int(p.name.split("-")[1]) for p in (ranks / "rank-0").glob("epoch-*"))


def assert_resumed_exactly(
    outcome: Outcome, workers_job: str, tmp_path: Path, before: Completed, reference: list[float]
) -> int:
    """The job that was interrupted ended as the uninterrupted run `before` did: the same
    History (every metric, float-equal), the same final weights on every rank; the replaced
    worker pods went on from one barrier, after the first epochs. Returns that barrier."""
    expected = history_of(before.tmp_path)
    history = history_of(tmp_path)
    assert history["history"] == expected["history"]
    assert history["epoch"] == expected["epoch"]
    assert history["history"]["loss"] == pytest.approx(reference, rel=1e-5, abs=1e-6)
    last = max(run.attempt for run in outcome.runs_of(workers_job))
    resumed = worker_results(outcome, workers_job, attempt=last)
    final = worker_results(before.outcome, workers_job)
    assert [r["weights_sha256"] for r in resumed] == [r["weights_sha256"] for r in final]
    [after] = {r["resumed_after"] for r in resumed}  # one barrier for every rank
    assert after is not None, "the replaced pods started the job over"
    # Each resumed worker ran the epochs after that barrier, and only those.
    for result in resumed:
        assert result["loss"] == pytest.approx(history["history"]["loss"][after + 1 :], rel=1e-6)
    return after


def test_a_worker_that_raises_fails_the_job_at_once_and_the_coordinator_names_it(tmp_path):
    documents = rendered(
        "indexed-job",
        worker_command=("python", "examples/k8s_train.py", "--crash-at-epoch", "2"),
    )
    with cluster_for(documents, tmp_path) as cluster:
        outcome = cluster.run(timeout_s=TIMEOUT_S)
    # Exit 1 matches podFailurePolicy FailJob: no retry. distcb.worker_main told the
    # coordinator (WorkerFailed), which fails the job instead of restarting it.
    assert outcome.jobs["distcb-workers"] == ("Failed", "PodFailurePolicy")
    exits = {name: (attempt, code) for name, attempt, code, _ in outcome.exits("distcb-workers")}
    assert exits["distcb-workers-1"] == (0, 1)
    # Rank 0 ends too. On its own: its all-reduce lost its peer, the coordinator said the job
    # failed, so it exits 1. Or the failed Job's pods are stopped first (the kubelet's
    # SIGTERM, "Terminated"): 143 when the SIGTERM reached it before the coordinator's word,
    # 137 when it sat in the collective past the grace period. Never 0, never restarted.
    [rank0] = [r for r in outcome.runs_of("distcb-workers") if r.pod.hostname.endswith("-0")]
    if rank0.action == "Terminated":
        assert rank0.exit_code in (1, 137, 143), rank0.log()
    else:
        assert rank0.exit_code == 1, rank0.log()
    assert len(outcome.runs_of("distcb-workers")) == 2  # nothing restarted
    # The coordinator fails the job (exit 1, permanent) and says which rank was lost.
    [coordinator] = outcome.runs_of("distcb-coordinator")
    assert (coordinator.exit_code, coordinator.action) == (1, "FailJob")
    assert outcome.jobs["distcb-coordinator"] == ("Failed", "PodFailurePolicy")
    assert re.search(r"WorkerLostError.*\brank 1\b", coordinator.log(), re.I), coordinator.log()
    assert "injected failure at the start of epoch 2" in outcome.runs_of("distcb-workers")[1].log()


def test_a_permanent_failure_fails_the_jobset_without_restarting_it(tmp_path):
    documents = rendered("jobset", worker_command=("python", "examples/k8s_train.py", "--epochs=0"))
    with cluster_for(documents, tmp_path) as cluster:
        outcome = cluster.run(timeout_s=TIMEOUT_S)
    # argparse's exit 2 (bad usage) -> FailJob -> failOnPermanentExit -> FailJobSet.
    assert outcome.jobset == ("Failed", 0)
    assert outcome.jobs["distcb-workers-0"] == ("Failed", "PodFailurePolicy")
    assert {
        code for _, _, code, action in outcome.exits("distcb-workers-0") if action == "FailJob"
    } == {2}
    assert [action for *_, action in outcome.exits("distcb-coordinator-0")] == ["Terminated"]


def test_a_sigkilled_worker_restarts_the_jobset_which_resumes_exactly(
    tmp_path, uninterrupted, reference
):
    # 137 (SIGKILL, as for an OOM kill) matches no podFailurePolicy rule: it counts against
    # backoffLimit 0, the Job fails with BackoffLimitExceeded, and the JobSet's restartOnCrash
    # rule recreates every Job, the coordinator's too. The new coordinator pod goes on from
    # its journal on the state claim, the new worker pods from the chief's backup on the
    # shared claim.
    fault = Fault("distcb-workers-0-1", signal.SIGKILL, when_log=LATE_EPOCH)
    with cluster_for(load(ROOT / "k8s" / "jobset.yaml"), tmp_path) as cluster:
        outcome = cluster.run(timeout_s=TIMEOUT_S, faults=[fault])
        report = cluster.report()
    assert fault.fired_at is not None, report
    assert outcome.jobset == ("Complete", 1), report
    first = [
        (name, code, action)
        for name, attempt, code, action in outcome.exits("distcb-workers-0")
        if attempt == 0
    ]
    assert ("distcb-workers-0-1", 137, "Count") in first
    later = [code for _, attempt, code, _ in outcome.exits("distcb-workers-0") if attempt == 1]
    assert later == [0, 0]
    coordinators = outcome.runs_of("distcb-coordinator-0")
    assert [(r.attempt, r.exit_code, r.action) for r in coordinators] == [
        (0, 143, "Terminated"),  # the JobSet restart's SIGTERM
        (1, 0, "Succeeded"),  # the new pod went on from the journal on the state claim
    ]
    assert_resumed_exactly(
        outcome, "distcb-workers-0", tmp_path, uninterrupted("jobset"), reference
    )


def test_a_sigkilled_worker_counts_against_backoff_limit_and_the_job_resumes_exactly(
    tmp_path, uninterrupted, reference
):
    # The survivor's collectives fail (TensorFlow's UnavailableError) once its peer is gone;
    # distcb.worker_main turns that into 143 since the coordinator restarts the job: only the
    # killed pod's 137 counts against backoffLimit (3).
    fault = Fault("distcb-workers-1", signal.SIGKILL, when_log=LATE_EPOCH)
    with cluster_for(load(ROOT / "k8s" / "indexed-job.yaml"), tmp_path) as cluster:
        outcome = cluster.run(timeout_s=TIMEOUT_S, faults=[fault])
        report = cluster.report()
    assert fault.fired_at is not None, report
    first = {
        name: (code, action)
        for name, attempt, code, action in outcome.exits("distcb-workers")
        if attempt == 0
    }
    assert first == {"distcb-workers-0": (143, "Ignore"), "distcb-workers-1": (137, "Count")}
    assert outcome.jobs == {
        "distcb-coordinator": ("Complete", None),
        "distcb-workers": ("Complete", None),
    }, report
    [coordinator] = outcome.runs_of("distcb-coordinator")  # it never stopped
    assert re.search(r"restart 1 of 10 after rank 1 disconnected", coordinator.log())
    assert_resumed_exactly(
        outcome, "distcb-workers", tmp_path, uninterrupted("indexed-job"), reference
    )


def test_a_preempted_worker_makes_every_worker_exit_143_and_the_job_resumes(
    tmp_path, uninterrupted, reference
):
    # SIGTERM + DisruptionTarget (an eviction, a reclaimed spot node): the worker's SIGTERM
    # handler (WorkerCallback's, installed after TensorFlow's) asks the coordinator for a
    # common stop; every worker exits 143; podFailurePolicy Ignore replaces the pods without
    # counting them; they rejoin the coordinator, which never stopped, load the chief's
    # backup of the last committed barrier, and the job ends as if nothing had happened.
    fault = Fault("distcb-workers-1", signal.SIGTERM, when_log=LATE_EPOCH, disruption=True)
    with cluster_for(load(ROOT / "k8s" / "indexed-job.yaml"), tmp_path) as cluster:
        outcome = cluster.run(timeout_s=TIMEOUT_S, faults=[fault])
        report = cluster.report()
    assert fault.fired_at is not None, report
    first = {
        name: (code, action)
        for name, attempt, code, action in outcome.exits("distcb-workers")
        if attempt == 0
    }
    assert first == {"distcb-workers-0": (143, "Ignore"), "distcb-workers-1": (143, "Ignore")}
    assert outcome.jobs == {
        "distcb-coordinator": ("Complete", None),
        "distcb-workers": ("Complete", None),
    }, report
    [killed] = [r for r in outcome.runs_of("distcb-workers") if (r.pod.index, r.attempt) == (1, 0)]
    assert "distcb rank 1: preempted" in killed.log()  # its own SIGTERM; rank 0 stopped with it
    [coordinator] = outcome.runs_of("distcb-coordinator")  # it never stopped
    assert re.search(r"restart 1 of 10 after rank 1 was preempted", coordinator.log())
    after = assert_resumed_exactly(
        outcome, "distcb-workers", tmp_path, uninterrupted("indexed-job"), reference
    )
    # A barrier the first attempt reached: what it trained after it was rolled back and
    # trained again, identically.
    first_epochs = [int(e) for e in re.findall(r"rank 1: epoch (\d+) done", killed.log())]
    assert max(first_epochs) >= after
