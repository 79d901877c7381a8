"""distcb.run in a real Jupyter kernel (ipykernel, whose event loop runs while a cell runs),
driven by nbclient as Jupyter runs a notebook: 2 workers train with the process and the thread
backend, and an interrupted cell stops its job cleanly while the kernel lives on.

The kernel is this venv's python (a kernelspec in a temporary JUPYTER_PATH), with this
process's environment (PYTHONPATH: this checkout)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNEL = "distcb-test-python"

SETUP = """
import os, sys, json
sys.path.insert(0, {root!r})
import distcb
from distcb.callbacks import EarlyStopping, LambdaCallback

def train(epochs, run_dir):
    # Defined in the notebook: the process backend pickles it by value.
    import keras
    import distcb.keras
    from tests.helpers.worker_fns import data
    ctx = distcb.worker_context()
    with open(os.path.join(run_dir, f"pid-{{ctx.rank}}-{{os.getpid()}}"), "w"):
        pass
    keras.utils.set_random_seed(7)
    x, y = data(ctx.rank)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy")
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=16, verbose=0,
              callbacks=[distcb.keras.WorkerCallback(samples=len(x), val_samples=len(x))])
"""

RUN = """
history = distcb.run(train, num_workers=2, backend={backend!r}, args=(5, {run_dir!r}),
                     callbacks=[EarlyStopping(monitor="val_loss", patience=50)])
print("HISTORY " + json.dumps({{"epoch": history.epoch, "history": history.history}}))
"""

LONG_RUN = """
def marked(name):
    open(os.path.join({run_dir!r}, name), "a").close()

history = distcb.run(
    train, num_workers=2, backend="process", args=(100000, {run_dir!r}),
    callbacks=[LambdaCallback(on_epoch_end=lambda epoch, logs: marked(f"epoch-{{epoch}}"),
                              on_train_end=lambda logs: marked("train-end"))])
print("STOPPED " + json.dumps({{"epochs": len(history.epoch)}}))
"""


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "distcb tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    return KERNEL


def cell(source: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(source))


def printed(cell_node, prefix: str) -> dict:
    text = "".join(o.get("text", "") for o in cell_node.outputs if o.get("name") == "stdout")
    line = [x for x in text.splitlines() if x.startswith(prefix)][-1]
    return json.loads(line[len(prefix) :])


def test_a_notebook_trains_two_workers_with_each_backend(tmp_path, kernel_name):
    runs = {b: tmp_path / b for b in ("process", "thread")}
    for path in runs.values():
        path.mkdir()
    notebook = nbformat.v4.new_notebook(
        cells=[
            cell(SETUP.format(root=ROOT)),
            cell(RUN.format(backend="process", run_dir=str(runs["process"]))),
            cell(RUN.format(backend="thread", run_dir=str(runs["thread"]))),
        ]
    )
    client = nbclient.NotebookClient(notebook, timeout=400, kernel_name=kernel_name)
    client.execute(cwd=ROOT)
    by_process = printed(notebook.cells[1], "HISTORY ")
    by_thread = printed(notebook.cells[2], "HISTORY ")
    for history in (by_process, by_thread):
        assert history["epoch"] == [0, 1, 2, 3, 4]
        assert len(history["history"]["val_loss"]) == 5
        assert history["history"]["loss"][-1] < history["history"]["loss"][0]
    # 2 worker processes in the process backend's run.
    assert len(list(runs["process"].glob("pid-*"))) == 2


def test_interrupting_the_cell_stops_the_job_cleanly_and_the_kernel_lives_on(tmp_path, kernel_name):
    notebook = nbformat.v4.new_notebook(
        cells=[
            cell(SETUP.format(root=ROOT)),
            cell(LONG_RUN.format(run_dir=str(tmp_path))),
            cell('print("ALIVE", 6 * 7)'),
        ]
    )
    client = nbclient.NotebookClient(notebook, timeout=400, kernel_name=kernel_name)

    async def scenario() -> None:
        async with client.async_setup_kernel(cwd=ROOT):
            await client.async_execute_cell(notebook.cells[0], 0)
            running = asyncio.ensure_future(client.async_execute_cell(notebook.cells[1], 1))
            deadline = time.monotonic() + 300
            while not (tmp_path / "epoch-2").exists():
                assert not running.done(), "the cell ended before it could be interrupted"
                assert time.monotonic() < deadline, "the job trained no 3 epochs in 300 s"
                await asyncio.sleep(0.1)
            await client.km.interrupt_kernel()
            await running  # no CellExecutionError: the cell ends normally
            await client.async_execute_cell(notebook.cells[2], 2)

    asyncio.run(scenario())
    stopped = printed(notebook.cells[1], "STOPPED ")
    assert 3 <= stopped["epochs"] < 100000
    assert (tmp_path / "train-end").exists(), "on_train_end did not run"
    stderr = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert "Ctrl-C: the job stops at the end of this epoch" in stderr
    assert "KeyboardInterrupt" not in stderr
    # The workers ended (no stray processes) and the kernel runs the next cell.
    pids = [int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 2
    assert not [pid for pid in pids if _alive(pid)]
    assert "ALIVE 42" in "".join(o.get("text", "") for o in notebook.cells[2].outputs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is no stray process: it ended, its parent (the kernel) did not reap it yet.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
