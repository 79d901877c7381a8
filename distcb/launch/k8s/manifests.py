"""The manifests `distcb k8s render` writes, as plain dicts, from one `RenderOptions`.

Three variants:

- ``indexed-job``: a coordinator Job behind a Service, the workers as an
  Indexed Job behind a headless Service, the token Secret, a
  PersistentVolumeClaim for the coordinator's state directory and a
  ReadWriteMany one for the workers' backups;
- ``jobset``: one JobSet with two replicatedJobs (coordinator, workers); the
  JobSet controller makes the headless Service and the pod DNS names; the
  workers start once the coordinator is Ready (``dependsOn``);
- ``rayjob``: a KubeRay RayJob whose entrypoint runs a Ray Tune search with
  distcb trials (``examples/tune_asha.py``).

The world size is written once here and lands in every field that needs it
(``completions``, ``parallelism``, ``DISTCB_WORLD_SIZE``, ``--world-size``).

Exit codes, and what the failure policies do with them (docs/kubernetes.md):
0 finished (also a coordinated early stop): nothing restarts; 143 preempted
(SIGTERM: the pod was deleted or its node reclaimed): the pod is replaced and
does not count against ``backoffLimit``; 1 failed and 2 bad usage: permanent,
the Job (JobSet) fails at once; anything else (137: OOM-killed or SIGKILL)
counts against ``backoffLimit`` (JobSet: restarts the whole set, up to
``failurePolicy.maxRestarts``).

Exact resume: the coordinator journals every epoch barrier on its state volume
(``--state-dir``) and lets a lost or preempted worker restart the job up to
``max_resumes`` times (its ``--max-restarts``); the workers back up model and
optimizer under ``DISTCB_RUN_DIR``, a claim every worker pod mounts (under
MultiWorkerMirroredStrategy the chief writes, every worker reads).
"""

from __future__ import annotations

from collections.abc import Callable

from distcb.launch.k8s import indexed_job, jobset, rayjob
from distcb.launch.k8s.objects import Rendered
from distcb.launch.k8s.options import (
    EXIT_BAD_USAGE,
    EXIT_FAILED,
    EXIT_FINISHED,
    EXIT_PREEMPTED,
    VARIANTS,
    RenderOptions,
)

__all__ = [
    "EXIT_BAD_USAGE",
    "EXIT_FAILED",
    "EXIT_FINISHED",
    "EXIT_PREEMPTED",
    "VARIANTS",
    "RenderOptions",
    "render",
]

_RENDERERS: dict[str, Callable[[RenderOptions], Rendered]] = {
    "indexed-job": indexed_job.render,
    "jobset": jobset.render,
    "rayjob": rayjob.render,
}


def render(options: RenderOptions) -> Rendered:
    """The variant's objects, each with the comment lines written above it."""
    return _RENDERERS[options.variant](options)
