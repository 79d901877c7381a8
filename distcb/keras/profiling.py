"""The chief's side of TensorBoard's profile: the files TensorFlow's profiler wrote, packed for
the coordinator (``extras["profile"]``), which checks and writes them
(`distcb.callbacks.tensorboard_profiling.unpack_profile`). TensorFlow is imported only
when a profile is packed.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from distcb.callbacks.tensorboard_profiling import PAYLOAD_VERSION, PROFILE_PREFIX

__all__ = ["pack_profile"]


def pack_profile(train_dir: str, max_bytes: int) -> dict[str, Any]:
    """What a chief sends after profiling into `train_dir`: its profile files and summaries.

    Args:
        train_dir: the directory given to the chief's `BatchProfiler` (and its trace
            writer).
        max_bytes: the most raw bytes to send; beyond it the payload says why not.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    files: dict[str, str] = {}
    summaries: list[dict[str, Any]] = []
    total = 0
    profile_root = os.path.join(train_dir, *PROFILE_PREFIX.strip("/").split("/"))
    for root, _, names in os.walk(profile_root):
        for name in sorted(names):
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                data = file.read()
            total += len(data)
            rel = os.path.relpath(path, train_dir).replace(os.sep, "/")
            files[rel] = base64.b64encode(data).decode()
    for name in sorted(os.listdir(train_dir)):
        if name.startswith("events.out."):
            for record in tf.data.TFRecordDataset(os.path.join(train_dir, name)):
                event = event_pb2.Event.FromString(record.numpy())
                if event.HasField("summary"):
                    data = event.summary.SerializeToString()
                    total += len(data)
                    summaries.append(
                        {"step": int(event.step), "summary": base64.b64encode(data).decode()}
                    )
    if total > max_bytes:
        return {
            "version": PAYLOAD_VERSION,
            "error": f"the profile takes {total} bytes, over the {max_bytes} bytes a message "
            f"may carry (Config.max_message_bytes); profile fewer batches. It stays on the chief "
            f"in {train_dir}.",
        }
    return {"version": PAYLOAD_VERSION, "files": files, "summaries": summaries}
