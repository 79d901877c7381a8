import subprocess
import sys

OPTIONAL = ["ray", "keras", "tf_keras", "tensorflow", "aiohttp", "h5py", "tensorboardX"]


def test_core_imports_no_optional_dependency():
    code = (
        "import sys, pkgutil, importlib, distcb.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('distcb.core.' + m.name)\n"
        "import distcb.testing, distcb.transport.memory\n"
        f"bad = [m for m in {OPTIONAL!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"distcb.core imported {out.stdout.strip()}"
