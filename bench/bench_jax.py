"""Benchmark: Keras 3 `fit` on the JAX route (issue 23), per epoch.

    python bench/bench_jax.py [--quick]

`examples/moons_jax.py`'s training (the seed's moons model, one 30-sample step and the
70-sample validation per epoch), `EPOCHS` epochs, in interleaved rounds of:

* single: one plain Keras 3 JAX process, no distribution, Keras's EarlyStopping and
  ModelCheckpoint (the reference);
* plain, 2 processes: a JAX job (``jax.distributed``, gloo on CPU, ``DataParallel``),
  Keras's own EarlyStopping and ModelCheckpoint on every process, no distcb;
* distcb, 1 and 2 processes: ``distcb.run(..., keras_distribution=True)``,
  `WorkerCallback`, EarlyStopping and ModelCheckpoint once, on the coordinator.

The figure is each run's median epoch time (bench/jax_worker.py; the slowest process of a
job); distcb's share is distcb over plain with the same processes.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from common import load_line, spread  # noqa: E402

EPOCHS = 150
ROUNDS = 3
WORKER = os.path.join(ROOT, "bench", "jax_worker.py")
_TIMES = re.compile(r"BENCH rank=\d+ ms_per_epoch=([0-9.]+)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    return env


def _slowest(text: str, processes: int) -> float:
    times = [float(t) for t in _TIMES.findall(text)]
    if len(times) != processes:
        raise RuntimeError(f"expected {processes} timings, found {times}: {text[-2000:]}")
    return max(times)


def single(epochs: int, run_dir: str) -> float:
    done = subprocess.run(
        [sys.executable, WORKER, "single", str(epochs), run_dir],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
        check=True,
    )
    return _slowest(done.stdout, 1)


def plain(epochs: int, run_dir: str, processes: int = 2) -> float:
    from distcb.launch.keras_distribution import AttemptPorts

    address = AttemptPorts().address(0)
    children = []
    for rank in range(processes):
        env = _env()
        env.update(
            DISTCB_RANK=str(rank),
            DISTCB_WORLD_SIZE=str(processes),
            KERAS_DISTRIBUTION_JOB_ADDRESSES=address,
            KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes),
            KERAS_DISTRIBUTION_PROCESS_ID=str(rank),
        )
        children.append(
            subprocess.Popen(
                [sys.executable, WORKER, "plain", str(epochs), run_dir],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )
        )
    try:
        output = "".join(child.communicate(timeout=900)[0] for child in children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return _slowest(output, processes)


def with_distcb(epochs: int, run_dir: str, processes: int) -> float:
    import jax_worker

    import distcb
    from distcb.callbacks import EarlyStopping, ModelCheckpoint

    out = io.StringIO()
    distcb.run(
        jax_worker.train,
        num_workers=processes,
        keras_distribution=True,
        kwargs={"mode": "distcb", "epochs": epochs, "run_dir": run_dir},
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", patience=10**6),
            ModelCheckpoint(
                os.path.join(run_dir, "best_model.keras"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
            ),
        ],
        env={"PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "bench"), ROOT])},
        output=out,
    )
    return _slowest(out.getvalue(), processes)


def measure(rounds: int, epochs: int) -> dict[str, list[float]]:
    runs = {
        "single": lambda d: single(epochs, d),
        "plain2": lambda d: plain(epochs, d),
        "distcb1": lambda d: with_distcb(epochs, d, 1),
        "distcb2": lambda d: with_distcb(epochs, d, 2),
    }
    out: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            with tempfile.TemporaryDirectory() as run_dir:
                out[name].append(runs[name](run_dir))
            print(f"round {r}: {name} {out[name][-1]:.1f} ms/epoch", flush=True)
    return out


def main(quick: bool = False) -> str:
    header = load_line()
    rounds, epochs = (1, 40) if quick else (ROUNDS, EPOCHS)
    times = measure(rounds, epochs)
    single_ms = statistics.median(times["single"])
    share = [d / p for d, p in zip(times["distcb2"], times["plain2"], strict=True)]

    def row(label: str, key: str) -> str:
        return (
            f"| {label} | {spread(times[key], '{:.1f}')} "
            f"| {statistics.median(times[key]) / single_ms:.2f} |"
        )

    lines = [
        "## Keras 3 `fit` on the JAX route (issue 23)",
        "",
        f"Command: `python bench/bench_jax.py` (also run by `make bench`). {header}",
        "",
        f"`examples/moons_jax.py`'s training (one 30-sample step and the 70-sample validation "
        f"per epoch), {epochs} epochs, {rounds} round(s) in rotating order; per run the median "
        "time from one epoch's begin to the next (the slowest process; the first 10 epochs "
        "skipped). Keras 3 JAX backend, CPU, gloo collectives between the processes.",
        "",
        "| run | ms/epoch, min–**median**–max | × single process (median) |",
        "|---|---|---:|",
        row("single Keras 3 JAX process, no distribution, Keras's callbacks", "single"),
        row("distcb, 1 JAX process (`keras_distribution=True`)", "distcb1"),
        row(
            "2 JAX processes (`DataParallel`), Keras's own EarlyStopping + ModelCheckpoint on "
            "every process, no distcb",
            "plain2",
        ),
        row(
            "distcb, 2 JAX processes (`WorkerCallback`; EarlyStopping + ModelCheckpoint once, "
            "on the coordinator)",
            "distcb2",
        ),
        "",
        f"distcb's share with 2 processes (distcb over the same job with Keras's callbacks on "
        f"every process), per round: {spread(share)}. This model's step is tiny; the "
        "2-process runs add a gloo all-reduce and the assembly of the global batch over "
        "loopback to every step (not profiled apart here).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 40 epochs")
    print(main(parser.parse_args().quick))
