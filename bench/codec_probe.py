"""Codec and ingest figures of whichever distcb is on the path (run by bench/bench_ingest.py).

    PYTHONPATH=<a distcb checkout> python bench/codec_probe.py

Works with the JSON wire of the first layout (``distcb.core.messages``: a dict per
batch entry, strict JSON text frames) and with the MessagePack wire
(``distcb.protocol.messages``: columnar frames). Prints one JSON line:

* encode / decode: frames of `ENTRIES` batch entries (``loss``, ``accuracy``,
  float32 values), whole frames per second and batch entries per second, the way
  the websocket transport turns a message into its frame and back;
* ingest: what the coordinator does with a batch frame once it arrived, for
  `RANKS` workers: decode, queue in the batch merger, merge the steps every
  worker sent. Batch records (one per worker and step) per CPU-second.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from typing import Any

# Only the checkout on PYTHONPATH: an editable install's finder would answer for
# modules that checkout does not have (distcb.protocol in the first layout).
sys.meta_path[:] = [
    f for f in sys.meta_path if "editable" not in getattr(f, "__name__", type(f).__name__).lower()
]

ENTRIES = 256
RANKS = 8
REPEAT_S = 1.0


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def entries(rank: int, first: int, count: int) -> list[tuple[int, dict[str, float], float]]:
    out = []
    for step in range(first, first + count):
        seen = 32 * (step + 1)
        logs = {
            "loss": f32(1.0 / (2 + step + rank)),
            "accuracy": f32((step * 7 + rank) % seen / seen),
        }
        out.append((step, logs, float(seen)))
    return out


def codec() -> tuple[Any, Any, Any]:
    """(make_frame(rank, first, count), to_bytes(frame), from_bytes(data)) of this version."""
    try:
        from distcb.protocol import messages as wire
    except ImportError:
        from distcb.core import messages as old  # the JSON wire (before issue 11)

        def make_old(rank: int, first: int, count: int) -> Any:
            return old.BatchFrame(
                rank=rank,
                epoch=0,
                entries=tuple(
                    old.BatchEntry(s, logs, n) for s, logs, n in entries(rank, first, count)
                ),
            )

        def to_text(frame: Any) -> bytes:
            return json.dumps(old.encode(frame), allow_nan=False).encode()

        def from_text(data: bytes) -> Any:
            return old.decode(json.loads(data))

        return make_old, to_text, from_text

    def make_new(rank: int, first: int, count: int) -> Any:
        rows = entries(rank, first, count)
        return wire.BatchFrame(
            rank=rank,
            epoch=0,
            steps=[s for s, _, _ in rows],
            logs={k: [logs[k] for _, logs, _ in rows] for k in ("loss", "accuracy")},
            samples=[n for _, _, n in rows],
        )

    return make_new, wire.encode, wire.decode_from_worker


def merger() -> tuple[Any, Any]:
    """(new merger, add(merger, rank, frame)) of this version."""
    try:
        from distcb.coordinator.batch_merge import BatchMerger

        return BatchMerger, lambda m, rank, frame: m.add(rank, frame)
    except ImportError:
        from distcb.core.aggregate import BatchMerger as Old

        return Old, lambda m, rank, frame: m.add(rank, frame.entries)


def rate(fn: Any) -> float:
    """Calls of `fn` per CPU-second (repeated for about REPEAT_S)."""
    fn()
    calls, started = 0, time.process_time()
    while True:
        fn()
        calls += 1
        spent = time.process_time() - started
        if spent >= REPEAT_S:
            return calls / spent


def main() -> None:
    import distcb

    make, to_bytes, from_bytes = codec()
    frame = make(0, 0, ENTRIES)
    data = to_bytes(frame)
    encode_per_s = rate(lambda: to_bytes(frame))
    decode_per_s = rate(lambda: from_bytes(data))
    new_merger, add = merger()
    payloads = [
        [to_bytes(make(r, first, ENTRIES)) for first in range(0, 4 * ENTRIES, ENTRIES)]
        for r in range(RANKS)
    ]
    live = set(range(RANKS))

    def ingest() -> None:
        m = new_merger(0)
        for chunk in range(4):
            for rank in range(RANKS):
                add(m, rank, from_bytes(payloads[rank][chunk]))
                m.pop_ready(live)

    ingest_per_s = rate(ingest)
    print(
        json.dumps(
            {
                "frame_bytes": len(data),
                "code": distcb.__file__,
                "encode_frames_per_s": encode_per_s,
                "decode_frames_per_s": decode_per_s,
                "entries_per_frame": ENTRIES,
                "ingest_records_per_cpu_s": ingest_per_s * RANKS * 4 * ENTRIES,
                "ranks": RANKS,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
