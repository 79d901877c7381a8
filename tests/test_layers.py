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


def test_imports_under_type_checking_count():
    """A hint is an arrow too: a lower layer that needs a higher one's type declares a Protocol."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert "exclude_type_checking_imports" not in f.read()
