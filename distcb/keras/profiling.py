"""The chief's side of TensorBoard's profile: the files TensorFlow's profiler wrote, packed for
the coordinator (``extras.profile``: a ``Profile`` of `distcb.protocol.worker_data`, whose
decoder keeps every file under ``plugins/profile/``). TensorFlow is imported only when a
profile is packed.
"""

from __future__ import annotations

import os

from distcb.protocol.worker_data import PROFILE_PREFIX, Profile, ProfileFile, ProfileSummary

__all__ = ["pack_profile"]


def pack_profile(train_dir: str, max_bytes: int) -> Profile:
    """What a chief sends after profiling into `train_dir`: its profile files and summaries.

    Args:
        train_dir: the directory given to the chief's `BatchProfiler` (and its trace writer).
        max_bytes: the most raw bytes to send; beyond it the profile says why not.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    files: list[ProfileFile] = []
    summaries: list[ProfileSummary] = []
    total = 0
    profile_root = os.path.join(train_dir, *PROFILE_PREFIX.strip("/").split("/"))
    for root, _, names in os.walk(profile_root):
        for name in sorted(names):
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                data = file.read()
            total += len(data)
            rel = os.path.relpath(path, train_dir).replace(os.sep, "/")
            files.append(ProfileFile(rel, data))
    for name in sorted(os.listdir(train_dir)):
        if name.startswith("events.out."):
            for record in tf.data.TFRecordDataset(os.path.join(train_dir, name)):
                event = event_pb2.Event.FromString(record.numpy())
                if event.HasField("summary"):
                    data = event.summary.SerializeToString()
                    total += len(data)
                    summaries.append(ProfileSummary(int(event.step), data))
    if total > max_bytes:
        return Profile(
            error=f"the profile takes {total} bytes, over the {max_bytes} bytes a message "
            f"may carry (Config.max_message_bytes); profile fewer batches. It stays on the chief "
            f"in {train_dir}."
        )
    return Profile(files=tuple(files), summaries=tuple(summaries))
