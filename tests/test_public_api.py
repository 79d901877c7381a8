"""The public surface: each module's `__all__` is exactly what the README documents."""

import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented() -> dict[str, set[str]]:
    """Module -> names, from the README's "Public names" table."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("### Public names", 1)[1].split("\n#", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`distcb"):
            table[cells[0].strip("`")] = set(re.findall(r"`([A-Za-z_]\w*)`", cells[1]))
    return table


DOCUMENTED = documented()


def test_the_readme_documents_the_public_modules():
    assert set(DOCUMENTED) == {
        "distcb",
        "distcb.callbacks",
        "distcb.keras",
        "distcb.testing",
        "distcb.tune",
    }


@pytest.mark.parametrize("module_name", sorted(DOCUMENTED))
def test_all_is_what_the_readme_documents_and_every_name_resolves(module_name):
    module = importlib.import_module(module_name)
    assert set(module.__all__) == DOCUMENTED[module_name], (
        f"{module_name}.__all__ and the README's Public names table differ: "
        f"undocumented {sorted(set(module.__all__) - DOCUMENTED[module_name])}, "
        f"missing {sorted(DOCUMENTED[module_name] - set(module.__all__))}"
    )
    for name in module.__all__:
        assert getattr(module, name) is not None, name
