"""The Kubernetes manifests in k8s/ validate against the bundled API schemas."""

from __future__ import annotations

import os

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "k8s")


def documents():
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S, name)) as handle:
                for document in yaml.safe_load_all(handle):
                    yield name, document


@pytest.mark.parametrize(("name", "document"), list(documents()))
def test_manifest_is_valid(name, document):
    kubernetes_validate.validate(document, "1.30.0", strict=True)


def test_workers_are_an_indexed_job_behind_a_headless_service():
    by_kind = {(d["kind"], d["metadata"]["name"]): d for _, d in documents()}
    job = by_kind[("Job", "distcb-workers")]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["template"]["spec"]["subdomain"] == "distcb-workers"
    assert by_kind[("Service", "distcb-workers")]["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DISTCB_ADDRESS"]["value"] == "distcb-coordinator:8765"
    assert "DISTCB_RANK" not in env  # the rank comes from JOB_COMPLETION_INDEX
