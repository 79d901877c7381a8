"""`distcb k8s render`: the command line around `distcb.launch.k8s.manifests`."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from typing import Any

from distcb.launch.k8s.manifests import VARIANTS, RenderOptions, render
from distcb.launch.k8s.yaml_text import dump_documents

__all__ = ["add_parser", "run"]


def run(options: argparse.Namespace) -> int:
    """`distcb k8s render`: print (or write) the manifests; 2 on bad options."""
    values = {
        name: getattr(options, name)
        for name in RenderOptions.__dataclass_fields__
        if getattr(options, name, None) is not None
    }
    for name in ("worker_command", "tune_args"):
        if name in values:
            values[name] = tuple(shlex.split(values[name]))
    try:
        render_options = RenderOptions(**values)
    except ValueError as exc:
        print(f"distcb k8s render: {exc}", file=sys.stderr)
        return 2
    text = dump_documents(render(render_options), header=_header(render_options))
    if options.out:
        with open(options.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _header(options: Any) -> list[str]:
    args = ["distcb", "k8s", "render"]
    for spec in fields(options):
        value = getattr(options, spec.name)
        if spec.name in ("variant", "image") or value != spec.default:
            flag = spec.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(f"--{flag}" if value else f"--no-{flag}")
                continue
            shown = shlex.join(value) if isinstance(value, tuple) else str(value)
            args.append(f"--{flag}={shown}")
    return [
        f"Rendered by: {shlex.join(args)}",
        "Do not edit by hand: change the options and render again (docs/kubernetes.md).",
    ]


RENDER_DESCRIPTION = """\
Print the Kubernetes manifests of a distcb job: one coordinator pod (distcb coordinator,
your callbacks, its journal on a PersistentVolumeClaim) and one pod per worker (an Indexed
Job behind a headless Service, or one JobSet), with failure policies that read distcb's
exit codes; or a KubeRay RayJob that runs a Ray Tune search (--variant rayjob).

Before `kubectl apply`, create the Secrets the manifests use but do not hold:
  <name>-token   the job's token (a placeholder is rendered: delete it from the YAML)
  <name>-tls     the coordinator's certificate (tls.crt, tls.key) and the workers' CA
                 (ca.crt), unless --no-tls
The rendered YAML says the commands in its comments (<name> is --name, default distcb).

Two budgets, not to be confused:
  --max-restarts  Kubernetes restarts crashed pods (137, OOM-killed) this many times
  --max-resumes   distcb resumes the job from its last epoch barrier this many times
                  (preemptions included)"""

RENDER_EXAMPLES = """\
examples:
  distcb k8s render --variant jobset --image registry.example.com/train:1 --workers 4 > job.yaml
  distcb k8s render --variant indexed-job --image registry.example.com/train:1 \\
      --worker-command "python -m my_training.train" --callbacks my_training.callbacks:make \\
      --gpus-per-worker 1 --out job.yaml
  kubectl create secret generic distcb-token --from-literal=token="$(openssl rand -hex 32)"
  kubectl create secret generic distcb-tls --from-file=tls.crt --from-file=tls.key \\
      --from-file=ca.crt
  kubectl apply -f job.yaml"""


def add_parser(commands: Any) -> None:
    """Add ``k8s render`` and its options to the `distcb` command line."""
    k8s = commands.add_parser("k8s", help="Kubernetes manifests")
    render = k8s.add_subparsers(dest="k8s_command", required=True).add_parser(
        "render",
        help="print the manifests of a distcb job as YAML",
        description=RENDER_DESCRIPTION,
        epilog=RENDER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument(
        "--variant",
        required=True,
        choices=VARIANTS,
        help="an Indexed Job + headless Service, a JobSet, or a KubeRay RayJob (Ray Tune)",
    )
    render.add_argument("--image", required=True, help="the training image")
    render.add_argument("--name", help="prefix of every object's name (default distcb)")
    render.add_argument("--workers", type=int, help="the world size (default 2)")
    render.add_argument("--worker-command", help="the workers' command, shell-quoted")
    render.add_argument("--callbacks", help="the coordinator's module:function")
    render.add_argument("--port", type=int, help="the coordinator's port (default 8765)")
    render.add_argument("--collective-port", type=int, help="TF collective port (default 2222)")
    render.add_argument("--state-size", help="the coordinator state volume's size (default 1Gi)")
    render.add_argument(
        "--backups-size", help="the workers' backups volume's size, ReadWriteMany (default 10Gi)"
    )
    render.add_argument("--storage-class", help="storage class of the volumes")
    render.add_argument(
        "--max-restarts",
        type=int,
        help="KUBERNETES' budget for crashed pods (exit 137, OOM, other codes): the Job's "
        "backoffLimit / the JobSet's maxRestarts (default 3); preempted pods (143, "
        "DisruptionTarget) do not count. Not distcb's resumes: see --max-resumes",
    )
    render.add_argument(
        "--max-resumes",
        type=int,
        help="DISTCB's budget: how many times the job goes on from its last epoch barrier "
        "after a lost or preempted worker (default 10); rendered as the coordinator's own "
        "--max-restarts, so the two flags never mean the same budget",
    )
    render.add_argument("--grace-period-s", type=int, help="terminationGracePeriodSeconds")
    render.add_argument("--worker-cpu", help="each worker's CPU request (default 1)")
    render.add_argument("--worker-memory", help="each worker's memory request (default 2Gi)")
    render.add_argument("--gpus-per-worker", type=int, help="nvidia.com/gpu per worker")
    render.add_argument("--ray-version", help="rayjob: the image's Ray version")
    render.add_argument("--ray-workers", type=int, help="rayjob: Ray worker pods")
    render.add_argument("--tune-args", help="rayjob: arguments of examples/tune_asha.py")
    render.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        help="the coordinator serves wss:// from the Secret <name>-tls (default); --no-tls "
        "renders --insecure",
    )
    render.add_argument("--out", help="write to this file instead of stdout")
