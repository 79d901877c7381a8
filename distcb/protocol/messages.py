"""Wire messages, declared once: msgspec Structs from which encoding, decoding and
validation are derived.

Every message is a MessagePack map tagged by ``"type"``; floats travel as
floats (NaN and infinities included). Each direction has its own decoder, so
a worker cannot send a coordinator's message and the other way round. A frame
that does not decode raises `ProtocolError` naming the message type, the
field, the value received and what was expected.

Size limits that belong to the protocol itself (the length of a name, a path,
an error text) are declared on the fields; limits a deployment may tune
(message bytes, batch entries per frame, pending entries) live in `Config`
and are checked by the transports and the coordinator.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from distcb.protocol import wire_bounds
from distcb.protocol.bounds import (
    MAX_METRICS,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    MAX_TRACEBACK_CHARS,
    Name,
    Text,
)
from distcb.protocol.config import Config
from distcb.protocol.decisions import AnyDecision, Decision, NonNegInt
from distcb.protocol.errors import ProtocolError
from distcb.protocol.logs import LogValue
from distcb.protocol.worker_data import MAX_WORKER_REQUESTS, AnyWorkerRequest, EpochExtras

PROTOCOL_VERSION = 3
"""Bumped on every wire change. 2: MessagePack, columnar batch frames, validated join params.
3: typed worker requests in `Start` and typed `EpochEnd.extras`."""

Count = Annotated[float, msgspec.Meta(ge=0)]
Direction = Literal["min", "max"]
Flavour = Literal["keras3", "tf_keras"]


class Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """Base of every wire message."""

    type: ClassVar[str]


class JoinParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a worker knows of its `fit`, sent with its join.

    Attributes:
        epochs: the `epochs` given to `fit` (every worker must agree).
        initial_epoch: the `initial_epoch` given to `fit` (a resumed run).
        steps: steps per epoch, when known.
        verbose: `fit`'s verbosity (callbacks read it from params).
        samples, val_samples: samples behind this worker's epoch metrics.
        batch_size: lets batch logs carry the samples seen so far.
        metrics: the log names `fit` will report.
        directions: metric name -> "min"/"max", from the compiled metrics.
        learning_rate: the optimizer's learning rate (None under a schedule).
        flavour: "keras3" or "tf_keras".
        seed: the seed given to the worker callback (part of the job's identity).
        host: the worker's host name and process id, for status pages.
    """

    epochs: NonNegInt | None = None
    initial_epoch: NonNegInt = 0
    steps: NonNegInt | None = None
    verbose: int | Annotated[str, msgspec.Meta(max_length=16)] = 0
    samples: Count | None = None
    val_samples: Count | None = None
    batch_size: NonNegInt | None = None
    metrics: Annotated[list[Name], msgspec.Meta(max_length=MAX_METRICS)] = []
    directions: Annotated[dict[Name, Direction], msgspec.Meta(max_length=MAX_METRICS)] = {}
    learning_rate: Annotated[float, msgspec.Meta(ge=0)] | None = None
    flavour: Flavour | None = None
    seed: NonNegInt | None = None
    host: Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)] = ""


# ------------------------------------------------------------------------ worker -> coordinator


class Join(Message, frozen=True, tag="join"):
    """A worker's first message: who it is and what it trains."""

    type: ClassVar[str] = "join"
    rank: NonNegInt
    world_size: Annotated[int, msgspec.Meta(ge=1)]
    params: JoinParams = JoinParams()
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.protocol != PROTOCOL_VERSION:
            raise ValueError(
                f"protocol version {self.protocol} is not supported; this side speaks version "
                f"{PROTOCOL_VERSION}. Install the same distcb version on every worker and the "
                "coordinator."
            )
        if self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")


class BatchFrame(Message, frozen=True, tag="batches"):
    """Several batch-end logs of one epoch, in step order, one column per metric.

    ``logs[name][i]`` is metric `name` after step ``steps[i]``; ``samples[i]`` the
    samples this worker had seen in the epoch by then (None: unknown).
    """

    type: ClassVar[str] = "batches"
    rank: NonNegInt
    epoch: NonNegInt
    steps: list[NonNegInt]
    logs: Annotated[dict[Name, list[LogValue]], msgspec.Meta(max_length=MAX_METRICS)]
    samples: list[Count | None] | None = None

    def __post_init__(self) -> None:
        count = len(self.steps)
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must be strictly increasing")
        if self.samples is not None and len(self.samples) != count:
            raise ValueError(f"samples has {len(self.samples)} values for {count} steps")
        for name, column in self.logs.items():
            if len(column) != count:
                raise ValueError(f"logs[{name!r}] has {len(column)} values for {count} steps")

    @property
    def entries(self) -> int:
        return len(self.steps)


class EpochEnd(Message, frozen=True, tag="epoch_end"):
    """At `on_epoch_end`; the worker then waits for `EpochReply`.

    `extras` carries what coordinator callbacks asked the chief for (`Start.worker_requests`).
    """

    type: ClassVar[str] = "epoch_end"
    rank: NonNegInt
    epoch: NonNegInt
    logs: Annotated[dict[Name, LogValue], msgspec.Meta(max_length=MAX_METRICS)]
    samples: Count | None = None
    val_samples: Count | None = None
    extras: EpochExtras = EpochExtras()


class TrainEnd(Message, frozen=True, tag="train_end"):
    """At `on_train_end`; the worker then waits for `TrainEndReply`."""

    type: ClassVar[str] = "train_end"
    rank: NonNegInt


class Done(Message, frozen=True, tag="done"):
    """The train-end decisions are applied; the worker is leaving."""

    type: ClassVar[str] = "done"
    rank: NonNegInt
    report: dict[Name, Any] = {}


class Saved(Message, frozen=True, tag="saved"):
    """The chief carried out a SaveModel decision (or failed to)."""

    type: ClassVar[str] = "saved"
    rank: NonNegInt
    filepath: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
    error: Text | None = None


class BackedUp(Message, frozen=True, tag="backed_up"):
    """A worker carried out a BackupModel decision (or failed to)."""

    type: ClassVar[str] = "backed_up"
    rank: NonNegInt
    epoch: NonNegInt
    error: Text | None = None


class Preempted(Message, frozen=True, tag="preempted"):
    """The worker got SIGTERM (its pod is going away): stop the job where every worker
    can, so that it resumes from its backups."""

    type: ClassVar[str] = "preempted"
    rank: NonNegInt


class WorkerFailed(Message, frozen=True, tag="worker_failed"):
    """Training raised; the worker is leaving."""

    type: ClassVar[str] = "worker_failed"
    rank: NonNegInt
    error: Text
    traceback: Annotated[str, msgspec.Meta(max_length=MAX_TRACEBACK_CHARS)] = ""


class Heartbeat(Message, frozen=True, tag="heartbeat"):
    """Either direction: still alive."""

    type: ClassVar[str] = "heartbeat"


# ------------------------------------------------------------------------ coordinator -> worker


class Start(Message, frozen=True, tag="start"):
    """Once all joined: the go signal, with the `on_train_begin`/first `on_epoch_begin` decisions.

    `ahead_steps` bounds how far a worker may run ahead of the last step the
    coordinator processed (`decisions.last_allowed_step`): the window rule's W
    (`Config.window_steps`) when a callback decides on batch ends, else the wider
    flow-control bound `Config.max_ahead_steps`; None when no batch logs are wanted.
    On the wire it keeps its first name, ``window_steps``.
    `want_batch_logs` is False when no callback has batch hooks, so workers need
    not stream them. `worker_requests` says what coordinator callbacks ask the chief
    to compute from its model (weight histograms, the model JSON, a profile, the
    projector's embeddings): it answers in `EpochEnd.extras`. With a journal,
    `persist_snapshots` asks workers to keep weight snapshots on disk too, and
    `resume` says where a resumed job goes on.
    """

    type: ClassVar[str] = "start"
    decisions: tuple[AnyDecision, ...] = ()
    ahead_steps: Annotated[int, msgspec.Meta(ge=1)] | None = msgspec.field(
        default=None, name="window_steps"
    )
    want_batch_logs: bool = True
    worker_requests: Annotated[
        tuple[AnyWorkerRequest, ...], msgspec.Meta(max_length=MAX_WORKER_REQUESTS)
    ] = ()
    persist_snapshots: bool = False
    resume: Resume | None = None


class Resume(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a resumed job goes on: after epoch `epoch`, from the workers' backups of it,
    with the weight snapshots `snapshots` still held; `stopping` when it had decided to
    stop after that epoch (only the train end is left)."""

    epoch: NonNegInt
    snapshots: tuple[NonNegInt, ...] = ()
    stopping: bool = False

    def first_epoch(self, epochs: int) -> int:
        """The first epoch a worker trains in the resumed job: the one after the barrier,
        or `epochs` (`fit`'s, so none is left) when the job had decided to stop there."""
        return epochs if self.stopping else self.epoch + 1


class Progress(Message, frozen=True, tag="progress"):
    """Batch decisions (if any) and the last step the coordinator processed."""

    type: ClassVar[str] = "progress"
    epoch: NonNegInt
    processed_step: Annotated[int, msgspec.Meta(ge=-1)]
    decisions: tuple[AnyDecision, ...] = ()


class EpochReply(Message, frozen=True, tag="epoch_reply"):
    """At the epoch-end barrier: the decisions, then go on."""

    type: ClassVar[str] = "epoch_reply"
    epoch: NonNegInt
    decisions: tuple[AnyDecision, ...] = ()


class TrainEndReply(Message, frozen=True, tag="train_end_reply"):
    """The train-end decisions (restore best weights, a last save); `error` when the job failed."""

    type: ClassVar[str] = "train_end_reply"
    decisions: tuple[AnyDecision, ...] = ()
    error: Text | None = None


class Abort(Message, frozen=True, tag="abort"):
    """The job failed elsewhere: stop at the given decision, then end. With `restart`,
    the job goes on from its backups: the worker ends with the "retry me" exit code."""

    type: ClassVar[str] = "abort"
    reason: Text
    decisions: tuple[AnyDecision, ...] = ()
    restart: bool = False


WORKER_MESSAGES: tuple[type[Message], ...] = (
    Join,
    BatchFrame,
    EpochEnd,
    TrainEnd,
    Done,
    Saved,
    BackedUp,
    Preempted,
    WorkerFailed,
    Heartbeat,
)
COORDINATOR_MESSAGES: tuple[type[Message], ...] = (
    Start,
    Progress,
    EpochReply,
    TrainEndReply,
    Abort,
    Heartbeat,
)
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls for cls in (*WORKER_MESSAGES, *COORDINATOR_MESSAGES)
}

_encoder = msgspec.msgpack.Encoder()
_from_worker = msgspec.msgpack.Decoder(
    Join
    | BatchFrame
    | EpochEnd
    | TrainEnd
    | Done
    | Saved
    | BackedUp
    | Preempted
    | WorkerFailed
    | Heartbeat
)
_from_coordinator = msgspec.msgpack.Decoder(
    Start | Progress | EpochReply | TrainEndReply | Abort | Heartbeat
)
_any = msgspec.msgpack.Decoder()


def encode(message: Message) -> bytes:
    """A message as MessagePack bytes.

    Raises:
        ProtocolError: the message holds a value that cannot be encoded.
    """
    try:
        return _encoder.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"a {message.type!r} message cannot be encoded: {exc}") from None


_DEFAULT_CONFIG = Config()


def decode_from_worker(data: bytes, config: Config | None = None) -> Message:
    """Decode and validate a message a worker sent; ProtocolError says what was wrong
    (values and nesting are bounded by `Config.max_decoded_elements` and
    `Config.max_decoded_depth`, before anything is decoded)."""
    return _decode(_from_worker, data, "worker", config or _DEFAULT_CONFIG)


def decode_from_coordinator(data: bytes, config: Config | None = None) -> Message:
    """Decode and validate a message the coordinator sent; ProtocolError says what was wrong."""
    return _decode(_from_coordinator, data, "coordinator", config or _DEFAULT_CONFIG)


def _decode(
    decoder: msgspec.msgpack.Decoder[Any], data: bytes, sender: str, config: Config
) -> Message:
    what = f"a {sender} message"
    max_depth = config.max_decoded_depth
    wire_bounds.check(
        data, max_elements=config.max_decoded_elements, max_depth=max_depth, what=what
    )
    try:
        message: Message = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(_explain(data, str(exc), sender)) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"a {sender} frame is not MessagePack: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            f"{what} nests containers more than Config.max_decoded_depth={max_depth} deep"
        ) from None
    # The untyped field (a worker's report) nests as it likes: bounded here.
    if isinstance(message, Done) and message.report:
        wire_bounds.check_depth(message.report, max_depth=max_depth, what="done: report")
    return message


def _explain(data: bytes, problem: str, sender: str) -> str:
    """An error naming the message type, the field, the value received and what was expected."""
    try:
        raw = _any.decode(data)
    except msgspec.DecodeError:
        raw = None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not isinstance(raw, dict):
        return f"a {sender} message must be a map with a 'type', received {_short(raw)}"
    allowed = sorted(
        c.type for c in (WORKER_MESSAGES if sender == "worker" else COORDINATOR_MESSAGES)
    )
    if kind not in allowed:
        what = "unknown message type" if kind not in MESSAGE_TYPES else "a message of type"
        return f"a {sender} sent {what} {_short(kind)}; a {sender} sends one of {allowed}"
    message, _, path = problem.partition(" - at `")
    path = path.rstrip("`")
    if not path:
        return f"{kind}: {message}"
    received = _lookup(raw, path)
    where = f"{kind}: field {path.removeprefix('$.')}: {message}"
    return where if received is _MISSING else f"{where}; received {_short(received)}"


_MISSING = object()


def _lookup(value: Any, path: str) -> Any:
    """The value at a msgspec error path such as ``$.params.metrics[3]``."""
    current = value
    for part in path.removeprefix("$").replace("[", ".[").split("."):
        if not part:
            continue
        try:
            if part.startswith("["):
                index = part.strip("[]")
                current = current[int(index)] if index.lstrip("-").isdigit() else current[index]
            else:
                current = current[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return _MISSING
    return current


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decisions_json(decisions: tuple[Decision, ...] | list[Decision]) -> list[dict[str, Any]]:
    return [d.to_json() for d in decisions]
