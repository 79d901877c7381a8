"""Errors in one home: every public exception is declared in `distcb.protocol.errors`, the
README's names import from `distcb`, and the old import paths give the same objects."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
from pathlib import Path

import pytest

import distcb
from distcb.protocol import errors
from tests.test_public_api import DOCUMENTED

README_EXCEPTIONS = sorted(
    name
    for name in DOCUMENTED["distcb"]
    if inspect.isclass(getattr(distcb, name)) and issubclass(getattr(distcb, name), BaseException)
)

# Where each lived before it moved to protocol/errors.py (public paths, kept).
OLD_HOMES = {
    "CallbackFailed": "distcb.coordinator.engine",
    "JournalMismatchError": "distcb.coordinator.journal",
    "RendezvousError": "distcb.launch.rendezvous",
    "IntegrityError": "distcb.protocol.integrity",
    "ConnectionClosed": "distcb.transport.base",
}


def declared_in_errors() -> set[str]:
    return {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
        and not name.startswith("_")
    }


def test_the_readme_documents_every_exception_of_the_tree():
    assert set(README_EXCEPTIONS) == declared_in_errors()
    for name in ("RestartsExhausted", "JobInterrupted", "IntegrityError", "JobFailed"):
        assert name in README_EXCEPTIONS


@pytest.mark.parametrize("name", README_EXCEPTIONS)
def test_each_readme_exception_is_the_one_of_protocol_errors(name):
    value = getattr(distcb, name)
    assert value is getattr(errors, name)
    assert value.__module__ == "distcb.protocol.errors"


@pytest.mark.parametrize("name", sorted(OLD_HOMES))
def test_old_import_paths_give_the_same_class(name):
    module = importlib.import_module(OLD_HOMES[name])
    assert getattr(module, name) is getattr(distcb, name)


def test_no_public_exception_is_declared_outside_protocol_errors():
    """Read from the sources (keras/, tune/ and ray need optional dependencies to import):
    private ones (a leading underscore) and the command line's own stay where they act."""
    allowed = {"UsageError", "StatusUnavailable", "BodyError"}  # the CLI's, never raised to callers
    package = Path(distcb.__file__).parent
    strays = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(errors.__file__):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
            is_exception = any(b.endswith(("Error", "Exception", "Exit")) for b in bases)
            if is_exception and node.name not in allowed:
                strays.append(f"{path.relative_to(package)}: {node.name}")
    assert strays == []


@pytest.mark.parametrize("name", README_EXCEPTIONS)
def test_each_survives_pickling(name):
    cls = getattr(distcb, name)
    examples = {
        "IntegrityError": ("a/b.json", "damaged"),
        "RestartsExhausted": ([RuntimeError("boom")], 0),
    }
    args = examples.get(name, ("why",))
    try:
        error = cls(*args)
    except TypeError:
        pytest.skip(f"{name} takes other arguments (covered where it is raised)")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert str(again) == str(error)
