"""Wire messages: typed values, encoded to JSON-compatible dicts and validated on decode.

Every message is a dict with ``"type"`` and, for a worker's first message,
the protocol version. Logs travel as name -> float (see `distcb.core.codec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distcb.core.codec import (
    Logs,
    decode_logs,
    encode_logs,
    nonneg_int,
    optional_count,
    require,
)
from distcb.core.decisions import Decision, decision_from_dict
from distcb.core.errors import ProtocolError

PROTOCOL_VERSION = 1


_DIRECTIONS = ("min", "max")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Join(Message):
    """A worker's first message: who it is and what it trains.

    `params` holds what the worker knows of its `fit`: ``epochs``, ``steps``,
    ``samples`` and ``val_samples`` (per epoch, this worker), ``batch_size``,
    ``metrics`` (log names), ``directions`` (metric name -> "min"/"max",
    from the compiled metrics), ``learning_rate``, ``flavour`` ("keras3" or
    "tf_keras"), ``verbose``.
    """

    type: ClassVar[str] = "join"
    rank: int
    world_size: int
    params: dict[str, Any] = field(default_factory=dict)
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "protocol": self.protocol,
            "rank": self.rank,
            "world_size": self.world_size,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Join:
        where = "join"
        protocol = require(data, "protocol", int, where)
        if protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"join: protocol version {protocol} is not supported; this coordinator speaks "
                f"version {PROTOCOL_VERSION}. Install the same distcb version on every worker."
            )
        rank = nonneg_int(data, "rank", where)
        world_size = nonneg_int(data, "world_size", where)
        if world_size < 1 or rank >= world_size:
            raise ProtocolError(f"join: rank {rank} is outside world_size {world_size}")
        params = require(data, "params", dict, where)
        directions = params.get("directions", {})
        if not isinstance(directions, dict) or any(
            v not in _DIRECTIONS for v in directions.values()
        ):
            raise ProtocolError(
                f"join: params['directions'] must map metric names to 'min' or 'max', "
                f"received {directions!r}"
            )
        return cls(rank=rank, world_size=world_size, params=dict(params), protocol=protocol)


@dataclass(frozen=True)
class Start(Message):
    """Coordinator -> workers once all joined: the go signal.

    `window_steps` is None when no coordinator callback can decide on a batch
    end; workers then never wait for batch progress. `want_batch_logs` is
    False when no callback has batch hooks, so workers need not stream them.
    What the chief computes for TensorBoard: weight histograms every
    `histogram_freq` epochs (with images when `write_images`), the model JSON,
    a profile of global batches `profile_batch` ((0, 0): none), and every
    `embeddings_freq` epochs the embeddings file in `embeddings_dir`.
    """

    type: ClassVar[str] = "start"
    decisions: tuple[Decision, ...] = ()
    window_steps: int | None = None
    want_batch_logs: bool = True
    histogram_freq: int = 0
    want_model_json: bool = False
    write_images: bool = False
    profile_batch: tuple[int, int] = (0, 0)
    embeddings_freq: int = 0
    embeddings_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "decisions": [d.to_dict() for d in self.decisions],
            "window_steps": self.window_steps,
            "want_batch_logs": self.want_batch_logs,
            "histogram_freq": self.histogram_freq,
            "want_model_json": self.want_model_json,
            "write_images": self.write_images,
            "profile_batch": list(self.profile_batch),
            "embeddings_freq": self.embeddings_freq,
            "embeddings_dir": self.embeddings_dir,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Start:
        window = data.get("window_steps")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
            raise ProtocolError(f"start: window_steps must be an int or null, got {window!r}")
        counts = {}
        for name in ("histogram_freq", "embeddings_freq"):
            value = data.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProtocolError(f"start: {name} must be an int >= 0, got {value!r}")
            counts[name] = value
        profile = data.get("profile_batch", [0, 0])
        if (
            not isinstance(profile, list)
            or len(profile) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in profile)
        ):
            raise ProtocolError(f"start: profile_batch must be [start, stop], got {profile!r}")
        embeddings_dir = data.get("embeddings_dir")
        if embeddings_dir is not None and not isinstance(embeddings_dir, str):
            raise ProtocolError(f"start: embeddings_dir must be a string, got {embeddings_dir!r}")
        return cls(
            decisions=_decisions(data, "start"),
            window_steps=window,
            want_batch_logs=bool(data.get("want_batch_logs", True)),
            histogram_freq=counts["histogram_freq"],
            want_model_json=bool(data.get("want_model_json", False)),
            write_images=bool(data.get("write_images", False)),
            profile_batch=(profile[0], profile[1]),
            embeddings_freq=counts["embeddings_freq"],
            embeddings_dir=embeddings_dir,
        )


@dataclass(frozen=True)
class BatchEntry:
    step: int
    logs: Logs
    samples: float | None = None  # samples this worker has seen so far in the epoch


@dataclass(frozen=True)
class BatchFrame(Message):
    """Worker -> coordinator: several batch-end logs of one epoch, in step order."""

    type: ClassVar[str] = "batches"
    rank: int
    epoch: int
    entries: tuple[BatchEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "rank": self.rank,
            "epoch": self.epoch,
            "entries": [[e.step, e.samples, encode_logs(e.logs)] for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchFrame:
        where = "batches"
        entries_raw = require(data, "entries", list, where)
        entries = []
        last = -1
        for i, raw in enumerate(entries_raw):
            if not isinstance(raw, list) or len(raw) != 3:
                raise ProtocolError(f"{where}: entry {i} must be [step, samples, logs]")
            step, samples, logs = raw
            if isinstance(step, bool) or not isinstance(step, int) or step <= last:
                raise ProtocolError(
                    f"{where}: entry {i} step must be an int above {last}, received {step!r}"
                )
            last = step
            count = optional_count({"samples": samples}, "samples", where)
            entries.append(BatchEntry(step, decode_logs(logs, f"{where} entry {i}"), count))
        return cls(
            rank=nonneg_int(data, "rank", where),
            epoch=nonneg_int(data, "epoch", where),
            entries=tuple(entries),
        )


@dataclass(frozen=True)
class EpochEnd(Message):
    """Worker -> coordinator at `on_epoch_end`; the worker then waits for `EpochReply`.

    `extras` carries small JSON data for sinks (weight histograms).
    """

    type: ClassVar[str] = "epoch_end"
    rank: int
    epoch: int
    logs: Logs
    samples: float | None = None
    val_samples: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "rank": self.rank,
            "epoch": self.epoch,
            "logs": encode_logs(self.logs),
            "samples": self.samples,
            "val_samples": self.val_samples,
            "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochEnd:
        where = "epoch_end"
        extras = data.get("extras") or {}
        if not isinstance(extras, dict):
            raise ProtocolError(f"{where}: extras must be an object")
        return cls(
            rank=nonneg_int(data, "rank", where),
            epoch=nonneg_int(data, "epoch", where),
            logs=decode_logs(require(data, "logs", dict, where), f"{where} logs"),
            samples=optional_count(data, "samples", where),
            val_samples=optional_count(data, "val_samples", where),
            extras=extras,
        )


@dataclass(frozen=True)
class Progress(Message):
    """Coordinator -> workers: batch decisions (if any) and the last processed step."""

    type: ClassVar[str] = "progress"
    epoch: int
    processed_step: int
    decisions: tuple[Decision, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "epoch": self.epoch,
            "processed_step": self.processed_step,
            "decisions": [d.to_dict() for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Progress:
        where = "progress"
        step = require(data, "processed_step", int, where)
        if step < -1:
            raise ProtocolError(f"{where}: processed_step must be >= -1, received {step}")
        return cls(
            epoch=nonneg_int(data, "epoch", where),
            processed_step=step,
            decisions=_decisions(data, where),
        )


@dataclass(frozen=True)
class EpochReply(Message):
    """Coordinator -> workers at the epoch-end barrier: the decisions, then go on."""

    type: ClassVar[str] = "epoch_reply"
    epoch: int
    decisions: tuple[Decision, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "epoch": self.epoch,
            "decisions": [d.to_dict() for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochReply:
        return cls(
            epoch=nonneg_int(data, "epoch", "epoch_reply"),
            decisions=_decisions(data, "epoch_reply"),
        )


@dataclass(frozen=True)
class TrainEnd(Message):
    """Worker -> coordinator at `on_train_end`; the worker waits for `TrainEndReply`."""

    type: ClassVar[str] = "train_end"
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "rank": self.rank}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainEnd:
        return cls(rank=nonneg_int(data, "rank", "train_end"))


@dataclass(frozen=True)
class TrainEndReply(Message):
    """Coordinator -> workers: the train-end decisions (restore best weights, a last save)."""

    type: ClassVar[str] = "train_end_reply"
    decisions: tuple[Decision, ...] = ()
    error: str | None = None  # set when the job failed elsewhere

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "decisions": [d.to_dict() for d in self.decisions],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainEndReply:
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError("train_end_reply: error must be a string or null")
        return cls(decisions=_decisions(data, "train_end_reply"), error=error)


@dataclass(frozen=True)
class Done(Message):
    """Worker -> coordinator: train-end decisions applied; the worker is leaving."""

    type: ClassVar[str] = "done"
    rank: int
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "rank": self.rank, "report": self.report}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Done:
        report = data.get("report") or {}
        if not isinstance(report, dict):
            raise ProtocolError("done: report must be an object")
        return cls(rank=nonneg_int(data, "rank", "done"), report=report)


@dataclass(frozen=True)
class Saved(Message):
    """Chief -> coordinator: a SaveModel decision was carried out (or failed)."""

    type: ClassVar[str] = "saved"
    rank: int
    filepath: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "rank": self.rank,
            "filepath": self.filepath,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Saved:
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError("saved: error must be a string or null")
        return cls(
            rank=nonneg_int(data, "rank", "saved"),
            filepath=require(data, "filepath", str, "saved"),
            error=error,
        )


@dataclass(frozen=True)
class WorkerFailed(Message):
    """Worker -> coordinator: training raised; the worker is leaving."""

    type: ClassVar[str] = "worker_failed"
    rank: int
    error: str
    traceback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "rank": self.rank,
            "error": self.error,
            "traceback": self.traceback,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerFailed:
        tb = data.get("traceback", "")
        if not isinstance(tb, str):
            raise ProtocolError("worker_failed: traceback must be a string")
        return cls(
            rank=nonneg_int(data, "rank", "worker_failed"),
            error=require(data, "error", str, "worker_failed"),
            traceback=tb,
        )


@dataclass(frozen=True)
class Heartbeat(Message):
    """Either direction: still alive."""

    type: ClassVar[str] = "heartbeat"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Heartbeat:
        return cls()


@dataclass(frozen=True)
class Abort(Message):
    """Coordinator -> workers: the job failed elsewhere; stop at the given decision and end."""

    type: ClassVar[str] = "abort"
    reason: str
    decisions: tuple[Decision, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "reason": self.reason,
            "decisions": [d.to_dict() for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Abort:
        return cls(
            reason=require(data, "reason", str, "abort"), decisions=_decisions(data, "abort")
        )


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (
        Join,
        Start,
        BatchFrame,
        EpochEnd,
        Progress,
        EpochReply,
        TrainEnd,
        TrainEndReply,
        Done,
        Saved,
        WorkerFailed,
        Heartbeat,
        Abort,
    )
}

WORKER_MESSAGES = (Join, BatchFrame, EpochEnd, TrainEnd, Done, Saved, WorkerFailed, Heartbeat)
COORDINATOR_MESSAGES = (Start, Progress, EpochReply, TrainEndReply, Abort, Heartbeat)


def encode(message: Message) -> dict[str, Any]:
    """A message as a JSON-compatible dict."""
    return message.to_dict()


def decode(data: Any) -> Message:
    """Validate and decode one message; ProtocolError says what was wrong."""
    if not isinstance(data, dict):
        raise ProtocolError(f"a message must be a JSON object, received {type(data).__name__}")
    kind = data.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            f"unknown message type {kind!r}; expected one of {sorted(MESSAGE_TYPES)}"
        )
    return cls.from_dict(data)


def _decisions(data: Mapping[str, Any], where: str) -> tuple[Decision, ...]:
    raw = data.get("decisions", [])
    if not isinstance(raw, list):
        raise ProtocolError(f"{where}: decisions must be a list")
    return tuple(decision_from_dict(d) for d in raw)
