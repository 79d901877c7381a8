"""Tune checkpoints of a distcb trial: staging what ModelCheckpoint saved, and reading it back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distcb.protocol.logs import from_json_value, to_json_value

ENV_CHECKPOINT = "DISTCB_TUNE_CHECKPOINT"
CHECKPOINT_INFO = "distcb_checkpoint.json"


@dataclass(frozen=True)
class RestoredCheckpoint:
    """The Tune checkpoint a restored trial resumes from, as its workers see it.

    Attributes:
        directory: a local copy of the checkpoint directory.
        epoch: the last epoch (0-based, counted over the trial's life) it covers.
        files: full paths of the model files ModelCheckpoint saved.
        metrics: the metrics reported with it.
    """

    directory: str
    epoch: int
    files: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str | None:
        """The saved model file (the last one when there are several), or None."""
        return self.files[-1] if self.files else None

    @classmethod
    def load(cls, directory: str) -> RestoredCheckpoint:
        info_path = os.path.join(directory, CHECKPOINT_INFO)
        if not os.path.exists(info_path):
            raise ValueError(
                f"{directory} holds no {CHECKPOINT_INFO}: not a checkpoint reported by distcb.tune"
            )
        with open(info_path) as handle:
            info = json.load(handle)
        files = tuple(os.path.join(directory, name) for name in info.get("files", []))
        return cls(directory, int(info["epoch"]), files, from_json_value(info.get("metrics", {})))


def restored_checkpoint() -> RestoredCheckpoint | None:
    """In `train_fn`: the checkpoint this Tune trial resumes from, or None on a fresh start."""
    directory = os.environ.get(ENV_CHECKPOINT)
    return RestoredCheckpoint.load(directory) if directory else None


def stage_checkpoint(paths: Sequence[str], metrics: dict[str, Any]) -> str | None:
    """A directory holding the saved files and their description, for ``tune.report``."""
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        return None
    directory = tempfile.mkdtemp(prefix="distcb-tune-checkpoint-")
    names: list[str] = []
    for index, path in enumerate(present):
        name = os.path.basename(path)
        if name in names or name == CHECKPOINT_INFO:
            name = f"{index}-{name}"
        try:
            os.link(path, os.path.join(directory, name))
        except OSError:
            shutil.copy2(path, os.path.join(directory, name))
        names.append(name)
    info = {"epoch": metrics["epoch"], "files": names, "metrics": to_json_value(metrics)}
    with open(os.path.join(directory, CHECKPOINT_INFO), "w") as handle:
        json.dump(info, handle)
    return directory
