"""At run time too: importing the core, the scripted-worker harness and the thread backend
loads no optional dependency (the import-linter contract checks static imports; this checks
what loads)."""

import subprocess
import sys

OPTIONAL = ["ray", "keras", "tf_keras", "tensorflow", "jax", "aiohttp", "h5py", "tensorboardX"]


def test_core_imports_no_optional_dependency():
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('protocol', 'coordinator', 'worker'):\n"
        "    package = importlib.import_module('distcb.' + name)\n"
        "    for m in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'distcb.{name}.{m.name}')\n"
        "import distcb, distcb.testing, distcb.transport, distcb.transport.memory\n"
        "import distcb.transport.inproc, distcb.launch.thread_backend  # the thread backend\n"
        "from distcb.testing import simulate\n"
        "simulate([], [[{'loss': 1.0}]])\n"
        f"bad = [m for m in {OPTIONAL!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core imported {out.stdout.strip()}"


def test_a_workers_websocket_client_loads_neither_the_server_nor_the_coordinator():
    code = (
        "import sys\n"
        "import distcb.transport.websocket, distcb.keras.worker_callback\n"
        "print(','.join(m for m in ('distcb.server', 'distcb.coordinator') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"a worker loaded {out.stdout.strip()}"
