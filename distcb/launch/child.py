"""Entry point of a worker process started by the process launcher.

`python -m distcb.launch.child SPEC` loads the training function from SPEC (a
local file the launcher wrote, readable only by this user: the launcher's own
process boundary, never the network), runs it, and reports a failure to the
coordinator through any open link before exiting non-zero.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import runpy
import sys
import traceback
import types


def _load_main(path: str) -> None:
    # Functions defined in the launching script pickle as `__main__.name`:
    # run that script as `__mp_main__` (its `if __name__ == "__main__"` block
    # stays off) and alias it, as multiprocessing's spawn does.
    module = types.ModuleType("__mp_main__")
    module.__file__ = path
    sys.modules["__mp_main__"] = module
    sys.modules["__main__"] = module
    module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))


def main(spec_path: str) -> int:
    with open(spec_path, "rb") as handle:
        spec = pickle.load(handle)  # local file written by our own parent process
    if spec.get("main_path"):
        sys.path.insert(0, os.path.dirname(spec["main_path"]))
        _load_main(spec["main_path"])
    train_fn, args, kwargs = pickle.loads(spec["payload"])
    result_path = os.path.join(os.path.dirname(spec_path), f"rank-{os.environ['DISTCB_RANK']}.json")
    try:
        train_fn(*args, **kwargs)
    except BaseException as exc:
        from distcb.keras.link import active_links

        for link in active_links():
            with contextlib.suppress(Exception):  # the original error must still be recorded
                link.fail(exc)
        text = "".join(traceback.format_exception(exc))
        with open(result_path, "w") as handle:
            json.dump({"error": f"{type(exc).__name__}: {exc}", "traceback": text}, handle)
        traceback.print_exc()
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
