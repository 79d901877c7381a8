"""The pod simulator's kubelet side on hand-written manifests: a wrong environment here would
make the local pod runs prove the wrong thing. No process is started."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from podsim import LocalCluster, expand, image_config, k8s_exit_code

ROOT = Path(__file__).resolve().parents[2]


def job(env, *, command=("python", "-c", "pass"), volumes=(), mounts=(), ports=()):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "train"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "template": {
                "metadata": {"labels": {"app": "train"}, "annotations": {"team": "ml"}},
                "spec": {
                    "subdomain": "net",
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": list(command),
                            "env": env,
                            "volumeMounts": list(mounts),
                            "ports": [{"containerPort": p} for p in ports],
                        }
                    ],
                    "volumes": list(volumes),
                },
            },
        },
    }


SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "creds"},
    "data": {"token": base64.b64encode(b"from-data").decode()},
    "stringData": {"other": "from-stringData"},
}


def simulate(tmp_path, *documents):
    return LocalCluster(list(documents), tmp_path, repo_root=ROOT, dockerfile=ROOT / "Dockerfile")


def field(name, path):
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def test_environment_has_what_the_kubelet_and_the_job_controller_give(tmp_path):
    env = [
        field("POD", "metadata.name"),
        field("IP", "status.podIP"),
        field("NS", "metadata.namespace"),
        field("APP", "metadata.labels['app']"),
        field("INDEX_LABEL", "metadata.labels['batch.kubernetes.io/job-completion-index']"),
        field("TEAM", "metadata.annotations['team']"),
        field("MISSING", "metadata.labels['nope']"),
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other"}}},
        {"name": "ADDR", "value": "$(POD).net:$(PORT)"},  # PORT is defined later: kept as is
        {"name": "PORT", "value": "2222"},
        {"name": "LITERAL", "value": "$$(POD)"},
    ]
    sim = simulate(tmp_path, SECRET, job(env))
    pod = sim.jobs["train"].pods[1]
    got = sim.environment(pod)
    assert got["POD"] == "train-1-local"
    assert got["HOSTNAME"] == "train-1"
    assert got["JOB_COMPLETION_INDEX"] == got["INDEX_LABEL"] == "1"
    assert (got["IP"], got["NS"], got["APP"], got["TEAM"], got["MISSING"]) == (
        "127.0.0.1",
        "default",
        "train",
        "ml",
        "",
    )
    assert (got["TOKEN"], got["OTHER"]) == ("from-data", "from-stringData")
    assert got["ADDR"] == "train-1-local.net:$(PORT)"
    assert got["LITERAL"] == "$(POD)"
    # The image's ENV (Dockerfile), with its paths mapped to the checkout.
    assert got["PYTHONUNBUFFERED"] == "1"
    assert got["PYTHONPATH"].split(":") == [str(ROOT), str(ROOT / "examples")]


def test_paths_volumes_and_commands_map_to_local_directories(tmp_path):
    sim = simulate(
        tmp_path,
        job(
            [{"name": "OUT", "value": "/results/x.json"}],
            command=("distcb", "coordinator", "--state-dir=/state", "--out", "/results/a:/app/b"),
            volumes=[
                {"name": "state", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "results", "emptyDir": {}},
            ],
            mounts=[
                {"name": "state", "mountPath": "/state"},
                {"name": "results", "mountPath": "/results"},
            ],
        ),
    )
    pod = sim.jobs["train"].pods[0]
    env = sim.environment(pod)
    argv, cwd = sim.command(pod, env)
    results = tmp_path / "pods" / "train-0-local" / "volumes" / "results"
    assert argv[1:] == [
        "-m",
        "distcb",
        "coordinator",
        f"--state-dir={tmp_path / 'claims' / 'claim'}",
        "--out",
        f"{results}/a:{ROOT}/b",
    ]
    assert env["OUT"] == f"{results}/x.json"
    assert cwd == ROOT  # the image's WORKDIR
    # A claim is shared by every pod that mounts it; emptyDir is per pod.
    other = sim.paths(sim.jobs["train"].pods[1])
    assert other["/state"] == tmp_path / "claims" / "claim"
    assert other["/results"] != results


def test_dns_names_and_own_ports_become_aliases(tmp_path):
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "net"},
        "spec": {"clusterIP": "None", "selector": {"app": "train"}, "ports": [{"port": 2222}]},
    }
    front = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "front"},
        "spec": {"selector": {"app": "train"}, "ports": [{"port": 80, "targetPort": 2222}]},
    }
    sim = simulate(tmp_path, headless, front, job([], ports=[2222]))
    pods = sim.jobs["train"].pods
    aliases = dict(e.split("=") for e in sim.aliases(pods[1]).split(","))
    assert aliases == {
        "front:80": f"127.0.0.1:{pods[0].ports[2222]}",  # a ClusterIP Service: one pod answers
        "train-0.net:2222": f"127.0.0.1:{pods[0].ports[2222]}",
        "train-1.net:2222": f"127.0.0.1:{pods[1].ports[2222]}",
        "0.0.0.0:2222": f"127.0.0.1:{pods[1].ports[2222]}",  # its own listening port
    }
    assert pods[0].ports[2222] != pods[1].ports[2222]


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        (
            [job([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}])],
            "needs Secret nope/k",
        ),
        ([job([field("X", "status.phase")])], "fieldRef 'status.phase' is not supported"),
        ([job([], command=("bash", "-c", "true"))], "runs python or distcb, not 'bash'"),
    ],
)
def test_what_the_simulator_cannot_stand_for_is_an_error(tmp_path, documents, message):
    sim = simulate(tmp_path, *documents)
    pod = sim.jobs["train"].pods[0]
    with pytest.raises(ValueError, match=message):
        sim.command(pod, sim.environment(pod))


def test_small_pieces():
    assert k8s_exit_code(-15) == 143
    assert k8s_exit_code(-9) == 137
    assert k8s_exit_code(2) == 2
    assert expand("$(A)-$(B)-$$(A)-$(", {"A": "1"}) == "1-$(B)-$(A)-$("
    workdir, env = image_config(ROOT / "Dockerfile")
    assert workdir == "/app"
    assert env["PYTHONPATH"] == "/app/examples"
