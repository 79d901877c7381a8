"""The layering of docs/design-notes.md, as import-linter contracts in pyproject.toml."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
    linter = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
