"""`distcb k8s render`: the checked-in manifests are its output, they validate against the real
schemas (core kinds and the upstream JobSet/RayJob CRDs), their variables agree with what
distcb reads in the pod, and their failure policies map the documented exit codes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from podsim import LocalCluster, jobset_failure_action, load, pod_failure_action
from schemas import CRD_DIR, crd_schema, errors

from distcb.launch.cli import main
from distcb.launch.k8s.manifests import (
    EXIT_BAD_USAGE,
    EXIT_FAILED,
    EXIT_PREEMPTED,
    VARIANTS,
    RenderOptions,
    render,
)
from distcb.worker import cluster
from distcb.worker.context import context_from_env

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
IMAGE = "registry.example.com/distcb-train:latest"
HEADER = "# Rendered by: "

OPTION_SETS = [
    {},
    {
        "name": "mnist-run-7",
        "workers": 5,
        "gpus_per_worker": 1,
        "storage_class": "fast-ssd",
        "max_restarts": 0,
        "max_resumes": 0,
        "backups_size": "200Gi",
        "worker_command": ("python", "-m", "my_training.train", "--lr", "0.1"),
    },
]


def documents(variant: str, **options) -> list[dict]:
    return [doc for _, doc in render(RenderOptions(variant=variant, image=IMAGE, **options))]


# ------------------------------------------------------------------ up to date


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_checked_in_manifests_are_what_render_prints_today(path, capsys):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(HEADER + "distcb k8s render "), first
    args = shlex.split(first[len(HEADER) :])[1:]
    assert main(args) == 0
    assert capsys.readouterr().out == text, f"{path.name} is stale: regenerate it with `make k8s`"


def test_every_variant_is_checked_in():
    assert sorted(p.stem for p in K8S.glob("*.yaml")) == sorted(VARIANTS)


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("options", OPTION_SETS, ids=["defaults", "custom"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_manifests_validate_against_the_real_schemas(variant, options):
    for document in documents(variant, **options):
        assert errors(document) == [], f"{document['kind']} {document['metadata']['name']}"


def test_the_crd_schemas_are_strict_enough_to_catch_mistakes():
    jobset = next(d for d in documents("jobset") if d["kind"] == "JobSet")
    jobset["spec"]["failurPolicy"] = jobset["spec"].pop("failurePolicy")  # a typo
    jobset["spec"]["replicatedJobs"][1]["dependsOn"][0]["status"] = "Running"  # not an enum value
    jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
        "imagePullPolice"
    ] = "Always"  # a typo deep inside the pod template
    found = "\n".join(errors(jobset))
    assert "'failurPolicy' was unexpected" in found
    assert "'Running' is not one of ['Ready', 'Complete']" in found
    assert "imagePullPolice" in found
    rayjob = next(d for d in documents("rayjob") if d["kind"] == "RayJob")
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName")
    assert any("'groupName' is a required property" in e for e in errors(rayjob))


def test_missing_crds_fail_loudly(tmp_path):
    assert CRD_DIR.is_dir(), f"{CRD_DIR} must exist next to the checkout (see its README)"
    with pytest.raises(FileNotFoundError, match="must sit next to the checkout"):
        crd_schema("jobset.x-k8s.io/v1alpha2", "JobSet", crd_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------ one source of truth


@pytest.mark.parametrize("variant", ["indexed-job", "jobset"])
def test_the_world_size_lands_in_every_field_that_needs_it(variant):
    text = "\n".join(str(d) for d in documents(variant, workers=7))
    jobs = [d for d in documents(variant, workers=7) if d["kind"] in ("Job", "JobSet")]
    specs = [j["spec"] for j in jobs if j["kind"] == "Job"] or [
        r["template"]["spec"] for r in jobs[0]["spec"]["replicatedJobs"]
    ]
    coordinator, workers = specs
    assert (workers["completions"], workers["parallelism"]) == (7, 7)
    assert (coordinator["completions"], coordinator["parallelism"]) == (1, 1)
    assert "--world-size=7" in coordinator["template"]["spec"]["containers"][0]["command"]
    env = {e["name"]: e for e in workers["template"]["spec"]["containers"][0]["env"]}
    assert env["DISTCB_WORLD_SIZE"]["value"] == "7"
    assert "'2'" not in text
    assert "world-size=2" not in text


@pytest.mark.parametrize("variant", ["indexed-job", "jobset"])
def test_in_the_pod_distcb_reads_the_rank_peers_and_coordinator_the_manifest_declares(
    variant, tmp_path
):
    """What each simulated pod's environment yields through distcb.worker.cluster: no
    process is started, so a renamed variable fails here in milliseconds."""
    keys = {"tls.crt": "the certificate", "tls.key": "the key", "ca.crt": "the CA"}
    secret = {"kind": "Secret", "metadata": {"name": "distcb-tls"}, "stringData": keys}
    sim = LocalCluster(
        [*documents(variant, workers=3), secret],
        tmp_path,
        repo_root=ROOT,
        dockerfile=ROOT / "Dockerfile",
    )
    [workers] = [j for j in sim.jobs.values() if "workers" in j.name]
    [coordinator] = [p for j in sim.jobs.values() if "coordinator" in j.name for p in j.pods]
    peers = [f"127.0.0.1:{pod.ports[2222]}" for pod in workers.pods]
    for index, pod in enumerate(workers.pods):
        env = sim.environment(pod)
        info = cluster.detect(env)
        assert (info.rank, info.world_size, info.workers) == (index, 3, tuple(peers))
        aliases = cluster.host_aliases(env["DISTCB_HOST_ALIASES"])
        assert cluster.apply_alias(env["DISTCB_ADDRESS"], aliases) == (
            f"127.0.0.1:{coordinator.ports[8765]}"
        )
        assert env["DISTCB_TOKEN"] == "replace-me-with-a-random-token"  # from the Secret
        ca = Path(env["DISTCB_TLS_CA"])  # the CA of the TLS Secret, and nothing else of it
        assert ca.read_text() == "the CA"
        assert sorted(p.name for p in ca.parent.iterdir()) == ["ca.crt"]
        assert pod.hostname == (
            "distcb-workers-" if variant == "indexed-job" else "distcb-workers-0-"
        ) + str(index)
    # The coordinator binds the port the probes and the workers reach.
    env = sim.environment(coordinator)
    argv, _ = sim.command(coordinator, env)
    assert "--state-dir=" + str(tmp_path / "claims" / "distcb-state") in argv
    tls_args = [a for a in argv if a.startswith("--tls-")]
    assert [Path(a.partition("=")[2]).read_text() for a in tls_args] == [
        "the certificate",
        "the key",
    ]
    bind = cluster.apply_alias("0.0.0.0:8765", cluster.host_aliases(env["DISTCB_HOST_ALIASES"]))
    assert bind == f"127.0.0.1:{coordinator.ports[8765]}"


@pytest.mark.parametrize("variant", ["indexed-job", "jobset"])
def test_the_job_resumes_from_the_state_claim_and_the_workers_shared_backups(variant, tmp_path):
    """Exact resume needs the coordinator's journal (--state-dir, with --max-restarts =
    max_resumes) and one backup directory every worker pod reads: the chief writes it
    under MultiWorkerMirroredStrategy and any worker loads it on resume."""
    rendered = documents(variant, workers=3, max_resumes=7, backups_size="50Gi")
    [claim] = [
        d
        for d in rendered
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "distcb-backups"
    ]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "50Gi"}},
    }
    keys = {"tls.crt": "the certificate", "tls.key": "the key", "ca.crt": "the CA"}
    secret = {"kind": "Secret", "metadata": {"name": "distcb-tls"}, "stringData": keys}
    sim = LocalCluster(
        [*rendered, secret], tmp_path, repo_root=ROOT, dockerfile=ROOT / "Dockerfile"
    )
    [workers] = [j for j in sim.jobs.values() if "workers" in j.name]
    [coordinator] = [p for j in sim.jobs.values() if "coordinator" in j.name for p in j.pods]
    shared = tmp_path / "claims" / "distcb-backups"
    for pod in workers.pods:
        context = context_from_env(sim.environment(pod))
        assert context.run_dir == str(shared)
    env = sim.environment(coordinator)
    argv, _ = sim.command(coordinator, env)
    assert "--max-restarts=7" in argv
    assert "--state-dir=" + str(tmp_path / "claims" / "distcb-state") in argv
    assert "DISTCB_RUN_DIR" not in env  # the coordinator keeps its journal in its own claim


def test_the_rayjob_entrypoint_is_accepted_by_the_tune_example():
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from tune_asha import build_parser
    finally:
        sys.path.remove(str(ROOT / "examples"))
    [rayjob] = [
        d for d in documents("rayjob", tune_args=("--epochs", "12")) if d["kind"] == "RayJob"
    ]
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:2] == ["python", "/app/examples/tune_asha.py"]  # the Dockerfile's layout
    options = build_parser().parse_args(words[2:])
    assert (options.epochs, options.storage) == (12, "/results/tune")
    [own] = [
        d for d in documents("rayjob", tune_args=("--storage=s3://b/t",)) if d["kind"] == "RayJob"
    ]
    assert build_parser().parse_args(shlex.split(own["spec"]["entrypoint"])[2:]).storage == (
        "s3://b/t"
    )
    mounts = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert mounts["volumeMounts"] == [{"name": "results", "mountPath": "/results"}]


# ------------------------------------------------------------------ exit codes -> policies


@pytest.mark.parametrize("variant", ["indexed-job", "jobset"])
def test_failure_policies_map_the_documented_exit_codes(variant):
    jobs = [d for d in documents(variant)]
    specs = [
        (d["spec"], d["spec"]["template"]["spec"]["containers"][0]["name"])
        for d in jobs
        if d["kind"] == "Job"
    ]
    for document in jobs:
        if document["kind"] == "JobSet":
            specs = [
                (
                    r["template"]["spec"],
                    r["template"]["spec"]["template"]["spec"]["containers"][0]["name"],
                )
                for r in document["spec"]["replicatedJobs"]
            ]
            policy = document["spec"]["failurePolicy"]
            assert jobset_failure_action(policy, "workers", "PodFailurePolicy") == "FailJobSet"
            assert jobset_failure_action(policy, "workers", "BackoffLimitExceeded") == (
                "RestartJobSet"
            )
            assert policy["maxRestarts"] == 3
    assert len(specs) == 2
    for spec, container in specs:
        assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
        policy = spec["podFailurePolicy"]
        assert pod_failure_action(policy, container, EXIT_FAILED) == "FailJob"
        assert pod_failure_action(policy, container, EXIT_BAD_USAGE) == "FailJob"
        assert pod_failure_action(policy, container, EXIT_PREEMPTED) == "Ignore"
        assert pod_failure_action(policy, container, 137) == "Count"  # OOM kill, SIGKILL
        assert pod_failure_action(policy, container, 137, ["DisruptionTarget"]) == "Ignore"


def test_policy_evaluation_follows_kubernetes_rule_semantics():
    policy = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "main", "operator": "In", "values": [1]},
            },
            {"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1, 3]}},
            {
                "action": "FailIndex",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "False"}],
            },
        ]
    }
    assert pod_failure_action(policy, "main", 1) == "FailJob"
    assert pod_failure_action(policy, "sidecar", 1) == "Count"  # containerName restricts
    assert pod_failure_action(policy, "main", 9) == "Ignore"  # NotIn [1, 3]
    assert pod_failure_action(policy, "main", 3) == "Count"
    assert pod_failure_action(policy, "main", 3, ["DisruptionTarget"]) == "Count"  # status False
    assert pod_failure_action(None, "main", 1) == "Count"
    rules = {
        "rules": [
            {
                "name": "a",
                "action": "FailJobSet",
                "targetReplicatedJobs": ["x"],
                "onJobFailureReasons": ["PodFailurePolicy"],
            }
        ]
    }
    assert jobset_failure_action(rules, "x", "PodFailurePolicy") == "FailJobSet"
    assert jobset_failure_action(rules, "y", "PodFailurePolicy") == "RestartJobSet"
    assert jobset_failure_action(rules, "x", "DeadlineExceeded") == "RestartJobSet"


# ------------------------------------------------------------------ options and the CLI


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "deployment"}, "variant must be one of indexed-job, jobset, rayjob"),
        ({"name": "Bad_Name"}, "name must be a DNS-1123 label"),
        ({"name": "x" * 50}, "would exceed 63 characters"),
        ({"workers": 0}, "workers must be an int >= 1, received 0"),
        ({"workers": True}, "workers must be an int >= 1, received True"),
        ({"port": 70000}, "port must be a TCP port"),
        ({"worker_memory": "lots"}, "worker_memory must be a Kubernetes quantity"),
        ({"backups_size": "10 GB"}, "backups_size must be a Kubernetes quantity"),
        ({"max_resumes": -1}, "max_resumes must be an int >= 0, received -1"),
        ({"callbacks": "nocolon"}, "module:function"),
        ({"worker_command": ()}, "worker_command must name a program"),
        ({"image": "has space"}, "image must be an image reference"),
    ],
)
def test_bad_options_are_refused_with_what_was_received(options, message):
    with pytest.raises(ValueError, match=message):
        RenderOptions(**{"variant": "jobset", "image": IMAGE, **options})


def test_cli_bad_options_exit_2_and_out_writes_a_file(tmp_path, capsys):
    assert main(["k8s", "render", "--variant", "jobset", "--image", IMAGE, "--workers", "0"]) == 2
    assert "workers must be an int >= 1, received 0" in capsys.readouterr().err
    out = tmp_path / "job.yaml"
    assert (
        main(
            [
                "k8s",
                "render",
                "--variant",
                "jobset",
                "--image",
                IMAGE,
                "--workers",
                "3",
                "--worker-command",
                "python -m train --lr '0.1'",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    [_, _, _, jobset] = load(out)
    workers = jobset["spec"]["replicatedJobs"][1]["template"]["spec"]
    assert workers["completions"] == 3
    assert workers["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "train",
        "--lr",
        "0.1",
    ]
    assert out.read_text().splitlines()[0] == (
        HEADER + "distcb k8s render --variant=jobset "
        f"--image={IMAGE} --workers=3 "
        "'--worker-command=python -m train --lr 0.1'"
    )


# ------------------------------------------------------------------ what the user must create


def referenced_secrets(node) -> set[str]:
    """Every Secret a manifest mounts or reads a key of."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("secretName"), str):
            found.add(node["secretName"])
        ref = node.get("secretKeyRef")
        if isinstance(ref, dict):
            found.add(ref["name"])
        for value in node.values():
            found |= referenced_secrets(value)
    elif isinstance(node, list):
        for value in node:
            found |= referenced_secrets(value)
    return found


@pytest.mark.parametrize("variant", ["jobset", "indexed-job"])
def test_the_secrets_the_default_render_needs_are_the_ones_the_docs_name(variant, capsys):
    used = referenced_secrets(documents(variant))
    assert used == {"distcb-token", "distcb-tls"}
    with pytest.raises(SystemExit) as done:
        main(["k8s", "render", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for secret in ("<name>-token", "<name>-tls"):
        assert secret in help_text, help_text
    for command in (
        "kubectl create secret generic distcb-token",
        "kubectl create secret generic distcb-tls --from-file=tls.crt --from-file=tls.key",
        "distcb k8s render --variant jobset --image",
    ):
        assert command in help_text, help_text
    assert "``" not in help_text
    readme = (ROOT / "README.md").read_text()
    steps = readme[readme.index("### Kubernetes") : readme.index("What runs: one coordinator")]
    for secret in sorted(used):
        assert f"kubectl create secret generic {secret} " in steps, secret


def test_the_two_restart_budgets_land_where_their_help_says(capsys):
    docs = documents("jobset", max_restarts=4, max_resumes=7)
    text = repr(docs)
    assert "'--max-restarts=7'" in text  # --max-resumes: the coordinator's own budget
    jobset = next(d for d in docs if d["kind"] == "JobSet")
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 4  # --max-restarts: Kubernetes'
    with pytest.raises(SystemExit):
        main(["k8s", "render", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-restarts Kubernetes restarts crashed pods" in help_text
    assert "--max-resumes distcb resumes the job from its last epoch barrier" in help_text
