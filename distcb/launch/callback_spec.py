"""Where a job's coordinator callbacks come from: the ``--callbacks SPEC`` of the command line.

SPEC names a function that takes no argument and returns the list of callbacks
the coordinator runs (``distcb.callbacks.X``, or Keras callbacks):

``module:function``
    import ``module`` (the current directory and the training script's directory
    are searched first) and call ``function()``;
``path/to/file.py:function``
    load that file as a module and call ``function()``;
``:function``
    ``function`` of the training script itself (``distcb launch`` only).

A file is loaded as a module, never as ``__main__``: its ``if __name__ ==
"__main__":`` block does not run, so a training script that keeps its training
under that guard (as multiprocessing already requires) can define its
coordinator callbacks next to its model. While the function is loaded and
called, ``sys.argv`` is the training script's command line, so it may parse the
script's own options.

Without ``--callbacks``, `distcb launch` reads the training script's source
(with `ast`: nothing runs) for a top-level ``def distcb_callbacks():``; when it
finds one, the spec is ``:distcb_callbacks``. Otherwise the coordinator runs no
callback but the History it always keeps.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import sys
import traceback
import types
from collections.abc import Iterator, Sequence
from typing import Any

from distcb.launch.usage import UsageError

DEFAULT_FUNCTION = "distcb_callbacks"
FORMS = "MODULE:FUNCTION, FILE.py:FUNCTION, or :FUNCTION (a function of the training script)"


def parse(spec: str) -> tuple[str, str]:
    """``(where, function)`` of a spec; `where` is "" for the training script itself.

    Raises:
        UsageError: not one of the three forms.
    """
    where, sep, function = spec.rpartition(":")
    if not sep or not function.isidentifier():
        raise UsageError(f"--callbacks must be {FORMS}; received {spec!r}")
    if where and not where.endswith(".py") and not all(p.isidentifier() for p in where.split(".")):
        raise UsageError(
            f"--callbacks {spec!r}: {where!r} is neither a module name (dotted identifiers) nor "
            f"a .py file; expected {FORMS}"
        )
    return where, function


def script_defines(script: str, function: str = DEFAULT_FUNCTION) -> bool:
    """Whether the source of `script` defines a top-level ``def <function>`` (nothing runs).

    Raises:
        UsageError: the script cannot be read or does not parse.
    """
    try:
        with open(script, "rb") as handle:
            tree = ast.parse(handle.read(), filename=script)
    except OSError as exc:
        raise UsageError(f"cannot read the training script {script!r}: {exc.strerror}") from None
    except SyntaxError as exc:
        raise UsageError(
            f"the training script {script!r} does not parse: {exc.msg} (line {exc.lineno})"
        ) from None
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function
        for node in tree.body
    )


def load(spec: str, *, script: str | None = None, script_argv: Sequence[str] = ()) -> list[Any]:
    """The callbacks `spec` names, made by calling its function.

    Args:
        spec: ``module:function``, ``file.py:function`` or ``:function``.
        script: the training script (``:function`` refers to it; its directory is searched
            for modules).
        script_argv: the training script's command line (``sys.argv`` while loading).

    Raises:
        UsageError: the spec is malformed, its module or file cannot be loaded, it has no
            such function, the function raised, or it returned something else than callbacks.
    """
    where, function_name = parse(spec)
    if not where:
        if script is None:
            raise UsageError(
                f"--callbacks {spec!r} names a function of the training script, but there is "
                "none here; use MODULE:FUNCTION or FILE.py:FUNCTION"
            )
        where = script
    directories = [os.getcwd()] + ([os.path.dirname(os.path.abspath(script))] if script else [])
    argv = [script or sys.argv[0], *script_argv]
    _add_to_path(directories)
    with _argv(argv):
        module = _load_module(spec, where)
        function = getattr(module, function_name, None)
        if function is None:
            defined = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise UsageError(
                f"--callbacks {spec!r}: {where} has no {function_name!r}; its callables: "
                f"{', '.join(defined[:20]) or 'none'}"
            )
        if not callable(function):
            raise UsageError(
                f"--callbacks {spec!r}: {function_name!r} is a {type(function).__name__}, "
                "not a function"
            )
        try:
            made = function()
        except Exception as exc:
            text = "".join(traceback.format_exception(exc)[1:])  # from the user's frame on
            raise UsageError(
                f"--callbacks {spec!r}: {function_name}() raised {type(exc).__name__}: {exc}\n"
                + text.rstrip()
            ) from None
    return _check_callbacks(spec, made)


def _load_module(spec: str, where: str) -> types.ModuleType:
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise UsageError(f"--callbacks {spec!r}: no such file {where!r}")
        stem = os.path.splitext(os.path.basename(path))[0]
        name = stem if stem.isidentifier() and stem not in sys.modules else "__distcb_callbacks__"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None
        assert module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # classes defined there pickle and dataclass as usual
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise UsageError(
                f"--callbacks {spec!r}: loading {where} raised {type(exc).__name__}: {exc}\n"
                + "".join(traceback.format_exception(exc)[1:]).rstrip()
            ) from None
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and where.startswith(exc.name):  # the module itself is missing
            raise UsageError(
                f"--callbacks {spec!r}: no module named {exc.name!r} (searched the current "
                "directory, the training script's directory and sys.path)"
            ) from None
        raise UsageError(
            f"--callbacks {spec!r}: importing {where} raised ModuleNotFoundError: {exc}"
        ) from None
    except Exception as exc:
        raise UsageError(
            f"--callbacks {spec!r}: importing {where} raised {type(exc).__name__}: {exc}\n"
            + "".join(traceback.format_exception(exc)[1:]).rstrip()
        ) from None


def _check_callbacks(spec: str, made: Any) -> list[Any]:
    if isinstance(made, str | bytes) or not hasattr(made, "__iter__"):
        raise UsageError(
            f"--callbacks {spec!r}: the function must return a list of callbacks, it returned "
            f"a {type(made).__name__}"
        )
    callbacks = list(made)
    for index, callback in enumerate(callbacks):
        if not any(callable(getattr(callback, hook, None)) for hook in _HOOKS):
            raise UsageError(
                f"--callbacks {spec!r}: item {index} of the returned list is a "
                f"{type(callback).__name__}, not a callback (it has none of the hooks "
                f"{', '.join(_HOOKS)})"
            )
    return callbacks


_HOOKS = ("on_train_begin", "on_epoch_end", "on_train_batch_end", "on_batch_end", "on_train_end")


def _add_to_path(directories: Sequence[str]) -> None:
    # They stay: a callback may import from there later, inside a hook.
    sys.path[:0] = [d for d in dict.fromkeys(directories) if d not in sys.path]


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
