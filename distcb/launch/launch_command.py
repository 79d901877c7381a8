"""`distcb launch`: run an ordinary training script on several workers, torchrun-style.

    distcb launch --nproc-per-node 2 train.py --epochs 10

    # two machines, 4 workers each, synchronous (TF_CONFIG for MultiWorkerMirroredStrategy),
    # TLS with a certificate for 10.0.0.1 signed by ca.pem (DISTCB_TLS_CA on every node):
    node0$ DISTCB_TOKEN=... DISTCB_TLS_CA=ca.pem distcb launch --nnodes 2 --node-rank 0 \\
               --nproc-per-node 4 --coordinator 10.0.0.1:29400 --bind 0.0.0.0 \\
               --tls-cert cert.pem --tls-key key.pem --tf-config train.py
    node1$ DISTCB_TOKEN=... DISTCB_TLS_CA=ca.pem distcb launch --nnodes 2 --node-rank 1 \\
               --nproc-per-node 4 --coordinator 10.0.0.1:29400 --tf-config train.py

The script trains with ``model.fit(..., callbacks=[distcb.keras.WorkerCallback()])``;
each worker finds its rank, the coordinator and the token in its environment.
The coordinator's callbacks come from ``--callbacks`` or from a function
``distcb_callbacks()`` the script defines (`distcb.launch.callback_spec`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys

from distcb.launch import callback_spec, quiet
from distcb.launch import serve as serving
from distcb.launch.node import NodeLauncher
from distcb.launch.node_plan import NodePlan
from distcb.launch.usage import (
    HelpFormatter,
    UsageError,
    host_port,
    non_negative_int,
    positive_int,
)
from distcb.protocol.config import Config
from distcb.transport import tls
from distcb.worker import cluster
from distcb.worker.context import ENV_TOKEN

DESCRIPTION = """\
Run an ordinary training script on several workers: a coordinator (on node 0) runs the
job's callbacks once, on logs aggregated over every worker, and each worker runs
`python SCRIPT ARGS...` with its rank, the coordinator's address and the job's token in
its environment (DISTCB_*; TF_CONFIG too with --tf-config; KERAS_BACKEND=jax and
KERAS_DISTRIBUTION_* with --keras-distribution, for Keras 3 `fit` on JAX).

Coordinator callbacks: --callbacks MODULE:FUNCTION | FILE.py:FUNCTION | :FUNCTION (a
function of the script, loaded without running its `if __name__ == "__main__":` block);
without --callbacks, a top-level `def distcb_callbacks():` of the script is used when
there is one. The function returns the list of callbacks.

Multi-node: start one launcher per node with the same --nnodes, --nproc-per-node and
--coordinator HOST:PORT (an address of node 0 that every node reaches), and --node-rank
0, 1, ...; the token comes from DISTCB_TOKEN or --token-file on every node. Workers
are ranked node by node (node k has ranks k*N .. k*N+N-1).

TLS (as `distcb coordinator`): node 0 serves https/wss with --tls-cert/--tls-key (or
DISTCB_TLS_CERT/DISTCB_TLS_KEY); every node and worker verifies that certificate against
--tls-ca (or DISTCB_TLS_CA). Beyond loopback, plaintext is refused unless --insecure.

Output lines are prefixed with "[rank N]"; node 0 shows the job's progress on stderr
(--no-progress: none). SIGTERM and SIGHUP are forwarded to every worker; Ctrl-C
(SIGINT) stops the job at the next epoch end on every worker (on_train_end runs; exit
130), a second Ctrl-C stops the workers at once; no worker outlives its launcher.

Restarts (one node): --max-restarts N --run-dir DIR restarts the job from its last
epoch barrier when a worker is lost or preempted; --resume goes on from the journal
a stopped launcher left in DIR/state.

Exit codes (the same on every node): 0 the job finished (an early stop included),
1 it failed, 2 bad usage, 143 stopped by SIGTERM or a worker was killed (retry),
128+N another signal N.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    launch = commands.add_parser(
        "launch",
        help="run a training script on N workers (and nodes), torchrun-style",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    launch.add_argument(
        "--nproc-per-node",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes on this node",
    )
    launch.add_argument(
        "--nnodes", type=positive_int, default=1, metavar="N", help="nodes (machines) in the job"
    )
    launch.add_argument(
        "--node-rank",
        type=non_negative_int,
        default=0,
        metavar="R",
        help="this node, 0 .. nnodes-1; node 0 runs the coordinator",
    )
    launch.add_argument(
        "--coordinator",
        type=host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where node 0 listens and every node and worker reaches the coordinator; port 0 "
        "picks a free one (one node only) (default: 127.0.0.1:0)",
    )
    launch.add_argument(
        "--bind",
        metavar="HOST",
        help="the interface node 0 listens on, e.g. 0.0.0.0 for all (default: the "
        "--coordinator host)",
    )
    launch.add_argument(
        "--node-host",
        metavar="HOST",
        help="the address other nodes reach this node's workers at, for TF_CONFIG (default: "
        "the address this machine uses towards the coordinator)",
    )
    launch.add_argument(
        "--callbacks",
        metavar="SPEC",
        help="the coordinator's callbacks: MODULE:FUNCTION, FILE.py:FUNCTION or :FUNCTION of "
        "the script (default: the script's distcb_callbacks() if it defines one, else none)",
    )
    launch.add_argument(
        "--tf-config",
        action="store_true",
        help="give every worker TF_CONFIG listing every worker of the job, for "
        "tf.distribute.MultiWorkerMirroredStrategy (synchronous training)",
    )
    launch.add_argument(
        "--keras-distribution",
        action="store_true",
        help="run every worker on Keras 3's JAX backend with its keras.distribution "
        "coordinates (KERAS_BACKEND=jax, KERAS_DISTRIBUTION_*; rank 0 hosts JAX's "
        "coordination service), for distcb.keras.jax_data_parallel() (synchronous training)",
    )
    launch.add_argument(
        "--threads-per-worker",
        type=positive_int,
        metavar="N",
        help="TensorFlow and OpenMP threads per worker (default: this node's CPUs divided by "
        "--nproc-per-node)",
    )
    launch.add_argument(
        "--gpus-per-worker",
        type=non_negative_int,
        metavar="N",
        help="whole GPUs per worker, given through CUDA_VISIBLE_DEVICES by local rank "
        "(default: the workers see every GPU)",
    )
    launch.add_argument(
        "--run-dir", metavar="DIR", help="the job's run directory, DISTCB_RUN_DIR (made absolute)"
    )
    launch.add_argument(
        "--config",
        metavar="JSON",
        help="distcb.Config fields as JSON, e.g. '{\"join_timeout_s\": 300}' (seconds); node 0's "
        "apply to every node (default: Config's defaults)",
    )
    launch.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the job's token from this file (default: ${ENV_TOKEN}; required with "
        "--nnodes > 1; on one node a random token is made)",
    )
    launch.add_argument(
        "--history", metavar="PATH", help="node 0 writes the job's History there as JSON"
    )
    serving.add_arguments(launch)  # --tls-cert, --tls-key, --insecure: as the coordinator's
    launch.add_argument(
        "--tls-ca",
        metavar="PATH",
        help=f"PEM CA that signed node 0's certificate: the nodes and the workers verify it "
        f"(default: ${tls.ENV_CA})",
    )
    launch.add_argument(
        "--max-restarts",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="how many times a lost or preempted worker may restart the job from its last "
        "epoch barrier: every worker starts again from its backup and the job ends as if "
        "nothing had happened (one node; needs --run-dir)",
    )
    launch.add_argument(
        "--resume",
        action="store_true",
        help="go on from the journal in RUN_DIR/state that a stopped launcher left (one node; "
        "needs --run-dir; with no journal there yet, start afresh)",
    )
    launch.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line (epoch, key metrics, best so far, ETA) on stderr",
    )
    launch.add_argument(
        "-m",
        "--module",
        action="store_true",
        help="SCRIPT is a module name, run as `python -m SCRIPT`",
    )
    launch.add_argument("script", metavar="SCRIPT", help="the training script (or module, -m)")
    launch.add_argument(
        "script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's arguments"
    )


def run(options: argparse.Namespace) -> int:
    """`distcb launch`; returns the exit code.

    Raises:
        UsageError: anything the command line must change.
    """
    plan = plan_from_options(options)
    return asyncio.run(NodeLauncher(plan).run())


def plan_from_options(options: argparse.Namespace) -> NodePlan:
    """Check the command line and load the callbacks (node 0); the node's plan.

    Raises:
        UsageError: what was received and what is expected.
    """
    nnodes, node_rank = options.nnodes, options.node_rank
    if node_rank >= nnodes:
        raise UsageError(
            f"--node-rank must be below --nnodes {nnodes} (0-{nnodes - 1}), received {node_rank}"
        )
    host, port = options.coordinator
    aliased = cluster.apply_alias(
        f"{host}:{port}", cluster.host_aliases(os.environ.get(cluster.ENV_HOST_ALIASES, ""))
    )
    if aliased != f"{host}:{port}":  # DISTCB_HOST_ALIASES names this address
        host, port = cluster.split_host_port(aliased)
    if nnodes > 1 and port == 0:
        raise UsageError(
            "--coordinator needs a fixed port when --nnodes > 1 (every node must know it), e.g. "
            f"--coordinator {host}:29400; received port 0"
        )
    token = _read_token(options.token_file)
    if nnodes > 1 and token is None:
        raise UsageError(
            f"--nnodes {nnodes} needs the job's token on every node: set {ENV_TOKEN} or pass "
            "--token-file PATH (the same secret everywhere, e.g. `openssl rand -hex 32`)"
        )
    config = _config(options.config)
    tls_cert, tls_key, tls_ca = _tls_files(options, node_rank, host)
    if (options.max_restarts or options.resume) and not options.run_dir:
        raise UsageError(
            "--max-restarts and --resume need --run-dir DIR: the journal and the workers' "
            "backups go there"
        )
    if (options.max_restarts or options.resume) and nnodes > 1:
        raise UsageError(
            f"--max-restarts and --resume work on one node for now, received --nnodes {nnodes}"
        )
    if (options.max_restarts or options.resume) and options.keras_distribution:
        raise UsageError(
            "--max-restarts and --resume do not work with --keras-distribution yet (a restart "
            "needs a new JAX coordination port per attempt); use distcb.run(keras_distribution="
            "True, max_restarts=N), which gives each attempt one"
        )
    if options.tf_config and options.keras_distribution:
        raise UsageError(
            "--tf-config (MultiWorkerMirroredStrategy) and --keras-distribution (Keras 3 on "
            "JAX) are two ways to train one model; choose one"
        )
    script_path = _script_path(options.script, options.module)
    command = (
        (sys.executable, "-m", options.script, *options.script_args)
        if options.module
        else (sys.executable, options.script, *options.script_args)
    )
    callbacks: list[object] = []
    if node_rank == 0:
        spec = options.callbacks
        if spec is None and script_path and callback_spec.script_defines(script_path):
            spec = ":" + callback_spec.DEFAULT_FUNCTION
        if spec:
            # The script's imports (TensorFlow) would print their start-up lines here.
            os.environ.setdefault(quiet.ENV_LEVEL, "3")
            with quiet.filtered_stderr():
                callbacks = callback_spec.load(
                    spec, script=script_path, script_argv=options.script_args
                )
        _say_callbacks(spec, callbacks, options.script)
    return NodePlan(
        command=command,
        nproc_per_node=options.nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        coordinator=(host, port),
        bind_host=options.bind,
        node_host=options.node_host,
        callbacks=tuple(callbacks),
        config=config,
        tf_config=options.tf_config,
        keras_distribution=options.keras_distribution,
        threads_per_worker=options.threads_per_worker,
        gpus_per_worker=options.gpus_per_worker,
        run_dir=os.path.abspath(options.run_dir) if options.run_dir else None,
        token=token,
        token_generated=token is None,
        history_path=options.history,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        insecure=options.insecure,
        max_restarts=options.max_restarts,
        resume=options.resume,
        progress=not options.no_progress,
    )


def _tls_files(
    options: argparse.Namespace, node_rank: int, host: str
) -> tuple[str | None, str | None, str | None]:
    """(certificate, key, CA), absolute, from the options or the environment; checked.

    Raises:
        UsageError: half a certificate, TLS without a CA for the workers, or a node that
            would send the token across the network in plaintext.
    """
    try:
        server = serving.server_tls_files(options, os.environ) if node_rank == 0 else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ca = options.tls_ca or os.environ.get(tls.ENV_CA) or None
    cert, key = server if server is not None else (None, None)
    if cert is not None and ca is None:
        raise UsageError(
            f"--tls-cert needs the CA that signed it for the workers to verify it: pass "
            f"--tls-ca PATH or set {tls.ENV_CA} (for a self-signed certificate, the "
            "certificate itself)"
        )
    if ca is not None and not os.path.isfile(ca):
        raise UsageError(f"the CA file {ca!r} (--tls-ca or {tls.ENV_CA}) does not exist")
    if node_rank > 0 and ca is None and not options.insecure and not _loopback(host):
        raise UsageError(
            f"node {node_rank} would send the job's token to {host} in plaintext: set "
            f"{tls.ENV_CA} (or --tls-ca) to the CA of node 0's certificate (node 0 then runs "
            "with --tls-cert/--tls-key), or pass --insecure on every node of a network you trust"
        )
    return tuple(os.path.abspath(p) if p else None for p in (cert, key, ca))  # type: ignore[return-value]


def _loopback(host: str) -> bool:
    from distcb.server import is_loopback

    return is_loopback(host)


def _say_callbacks(spec: str | None, callbacks: list[object], script: str) -> None:
    """Say which coordinator callbacks run: a misnamed function would otherwise run none,
    silently."""
    if spec is None:
        text = (
            f"none: no function named {callback_spec.DEFAULT_FUNCTION} in {script} "
            "(--callbacks MODULE:FUNCTION names another)"
        )
    else:
        names = ", ".join(type(cb).__name__ for cb in callbacks) or "none (an empty list)"
        where = f"{script}{spec}" if spec.startswith(":") else spec
        text = f"{names} (from {where})"
    print(f"distcb launch [node 0]: coordinator callbacks: {text}", file=sys.stderr, flush=True)


def _read_token(path: str | None) -> str | None:
    if path is None:
        return os.environ.get(ENV_TOKEN) or None
    try:
        with open(path) as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path!r} cannot be read: {exc.strerror}") from None
    if not token:
        raise UsageError(f"--token-file {path!r} is empty; it must hold the job's token")
    return token


def _config(raw: str | None) -> Config:
    if not raw:
        return Config()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config must be a JSON object, received {raw!r} ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config must be a JSON object of Config fields, received {raw!r}")
    try:
        return Config.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--config: {exc}") from None


def _script_path(script: str, module: bool) -> str | None:
    """The script's file (for its callbacks); None for a module without a source file."""
    if module:
        if os.getcwd() not in sys.path:  # `python -m` finds modules of the current directory
            sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(script)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise UsageError(f"no module named {script!r} to run with -m")
        origin = found.origin
        return origin if origin and origin.endswith(".py") else None
    if not os.path.isfile(script):
        raise UsageError(f"no such training script {script!r} (from {os.getcwd()})")
    return script
