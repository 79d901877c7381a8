"""Validation of rendered manifests: core kinds with kubernetes-validate, JobSet and RayJob with
jsonschema against the openAPIV3Schema of their upstream CRDs in ../shared/k8s-schemas/ (next to
the checkout; see its README). The CRD schemas are made strict the way the API server's strict
field validation is: an unknown field is an error, not silently pruned."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT.parent / "shared" / "k8s-schemas"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests target (podFailurePolicy is beta)
CRD_FILES = {
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset.x-k8s.io_jobsets.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
}


def crd_schema(api_version: str, kind: str, crd_dir: Path = CRD_DIR) -> dict[str, Any]:
    """The strict openAPIV3Schema of `kind` at `api_version`, read from `crd_dir`.

    Raises:
        FileNotFoundError: the CRD directory or file is missing (never a skip: without them
            the JobSet and RayJob manifests go unvalidated).
    """
    return _crd_schema(api_version, kind, str(crd_dir))


@functools.cache
def _crd_schema(api_version: str, kind: str, crd_dir: str) -> dict[str, Any]:
    path = Path(crd_dir) / CRD_FILES[(api_version, kind)]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the upstream CRDs must sit next to the checkout in "
            f"{Path(crd_dir)} (see its README) to validate {kind} manifests"
        )
    with open(path) as handle:
        crd = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind, path
    version = api_version.rpartition("/")[2]
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    raise ValueError(f"{path} has no version {version!r}")


def _strict(schema: Any) -> Any:
    """Objects with declared properties accept no others (kubectl --validate=strict)."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def errors(document: dict[str, Any]) -> list[str]:
    """Every schema violation of `document`, as readable lines (empty when valid)."""
    key = (document.get("apiVersion", ""), document.get("kind", ""))
    if key in CRD_FILES:
        validator = jsonschema.Draft7Validator(crd_schema(*key))
        found = [
            f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)
        ]
        # The pod templates inside, against the core schemas as well.
        for name, template in pod_templates(document):
            found += [f"{name}: {line}" for line in errors(template)]
        return sorted(found)
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(str(p) for p in error.path)}: {error.message}"]
    return []


def pod_templates(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Jobs inside a JobSet and the pod templates inside a RayJob, as core objects."""
    if document["kind"] == "JobSet":
        return [
            (
                f"replicatedJobs[{r['name']}]",
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": r["name"]},
                    "spec": r["template"]["spec"],
                },
            )
            for r in document["spec"]["replicatedJobs"]
        ]
    cluster = document["spec"]["rayClusterSpec"]
    groups = [("headGroupSpec", cluster["headGroupSpec"])] + [
        (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(cluster.get("workerGroupSpecs", []))
    ]
    return [
        (
            name,
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": group["template"],
            },
        )
        for name, group in groups
    ]
