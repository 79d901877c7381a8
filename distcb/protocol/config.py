"""Every limit and timeout distcb uses, in one frozen object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Limits and timeouts shared by the coordinator, the transports and the workers.

    Args:
        join_timeout_s: how long the coordinator waits for all ranks to join.
        connect_timeout_s: how long a worker tries to reach its coordinator.
        heartbeat_interval_s: how often each side says it is alive.
        heartbeat_timeout_s: silence after which a peer counts as lost.
        reply_timeout_s: how long a worker waits for an answer that needs no
            other worker (join acknowledgement, the train-end reply once all
            workers ended). The epoch barrier itself has no timeout: a slow
            worker is fine as long as it sends heartbeats.
        stop_timeout_s: after a failure, how long the coordinator waits for the
            surviving workers to reach `on_train_end` before giving up on them.
        sink_close_timeout_s: deadline for output sinks (RemoteMonitor,
            TensorBoard, CSV) to flush at the end of training.
        window_steps: the window W of the window rule (DESIGN.md): how many
            steps a worker may run ahead of the last step the coordinator
            processed when a callback can decide on batch ends.
        flush_interval_s: the shortest pause between two frames a paced transport
            (Ray) sends.
        flush_max_delay_s: the longest a batch log waits in a worker's buffer. Workers
            otherwise send a frame every quarter of the bound they run under (the
            window W when a callback decides on batches, else `max_ahead_steps`), so
            that their IO thread wakes rarely and never competes with training.
        max_message_bytes: the largest message a transport accepts.
        max_frame_entries: the largest number of batch entries in one frame.
        max_decoded_elements: the most values one message may hold (every map key and value,
            list item and container, counted before it is decoded): a byte on the wire can
            become 64 bytes of memory (an empty map), so bytes alone do not bound it.
        max_decoded_depth: the deepest containers may nest in one message.
        backup_every_epochs: with a journal (resumable jobs), workers back up model and
            optimizer at every this many epoch barriers (and at the last); a restart goes
            on from the newest barrier every worker backed up.
        max_ahead_steps: when coordinator callbacks only observe batches (no batch
            decisions, so no window rule), how many steps a worker may still run ahead
            of the last step the coordinator merged: the bound on what the coordinator
            buffers per worker. Must be at least `window_steps`.
        max_connections: the most TCP connections without the token the coordinator's server
            holds at once (probes, connections still in their handshake, and anything else
            that connects). One more is answered ``503`` and closed. A connection whose
            request carried the token (a worker, a signed-in status page) leaves this pool
            for one of the same size of its own. The server lowers it to what the
            process's open-file limit (``RLIMIT_NOFILE``, ``ulimit -n``) leaves room for.
        max_anonymous_per_address: the most of those connections without the token one
            peer address may hold; one more from it is answered ``503`` (TLS: closed).
        handshake_timeout_s: how long a connection may take from its TCP accept (its TLS
            handshake included) to a complete HTTP request, and how long a kept-alive
            connection may idle between requests; past it the server answers ``408`` and
            closes it. Bounds what a peer without the token can hold (slowloris).
        first_message_timeout_s: how long a worker may take from the websocket upgrade to
            its join; past it the connection is closed with code 4001
            (`distcb.protocol.close_codes.JOIN_TIMEOUT`).
        stall_timeout_s: how long an epoch barrier (or the batch merge, or the train-end
            barrier) may wait without progress (no merged step, no epoch end) while the
            ranks it waits for send nothing but heartbeats; then those ranks count as lost
            and the job fails, and ``/readyz`` answers 503 from that point on. Heartbeats
            come from a worker's IO thread, so this is what catches a training thread that
            hangs (a stuck collective, a dead data pipeline). Raise it above your longest
            epoch plus validation when no coordinator callback has batch hooks (workers
            then report once per epoch).
        max_request_body_bytes: the largest body an HTTP request to the coordinator's server
            may carry (the rendezvous of `distcb launch`); a larger one is answered ``413``.
        request_body_timeout_s: how long the server waits for a request's whole body (it
            may come in many TCP segments) once its headers arrived; then ``408``.
        rejection_log_interval_s: rejected connections (wrong token, over
            `max_connections`, handshake timeouts, the open-file limit) are counted in
            ``/status`` and logged at most once per interval for each kind; so is every
            other line a peer can repeat (a failed save, a rejected join, a wrong sign-in).
        status_session_s: how long a sign-in to the status page lasts (its cookie holds a
            random session value, forgotten at ``/logout`` or after this).
        max_status_sessions: status page sign-ins kept at once; one more forgets the oldest.
        max_status_streams: ``/events`` streams open at once; one more is answered ``503``.
        status_write_timeout_s: how long one ``/events`` write may wait for a viewer that
            reads too slowly (its bytes in flight are bounded by the socket's buffer);
            past it the stream is closed and its slot freed.
        max_queued_messages: per rank, the most messages other than batch frames (those are
            bounded by the window) that may wait for the coordinator's engine while a
            callback holds it; one more closes that rank's connection (it counts as lost).
    """

    join_timeout_s: float = 120.0
    connect_timeout_s: float = 60.0
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 15.0
    reply_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0
    sink_close_timeout_s: float = 10.0
    window_steps: int = 32
    flush_interval_s: float = 0.005
    flush_max_delay_s: float = 0.1
    max_message_bytes: int = 8 * 1024 * 1024
    max_frame_entries: int = 4096
    max_decoded_elements: int = 1 << 20
    max_decoded_depth: int = 32
    max_ahead_steps: int = 1024
    backup_every_epochs: int = 1
    max_connections: int = 1024
    max_anonymous_per_address: int = 64
    handshake_timeout_s: float = 10.0
    first_message_timeout_s: float = 10.0
    stall_timeout_s: float = 3600.0
    rejection_log_interval_s: float = 10.0
    max_request_body_bytes: int = 64 * 1024
    max_queued_messages: int = 256
    status_session_s: float = 12 * 3600.0
    max_status_sessions: int = 256
    max_status_streams: int = 16
    status_write_timeout_s: float = 10.0
    request_body_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"Config.{field.name} must be a number, received {value!r} "
                    f"of type {type(value).__name__}."
                )
            if value <= 0:
                raise ValueError(f"Config.{field.name} must be > 0, received {value!r}.")
        for name in (
            "window_steps",
            "max_frame_entries",
            "max_ahead_steps",
            "backup_every_epochs",
            "max_connections",
            "max_anonymous_per_address",
            "max_request_body_bytes",
            "max_decoded_elements",
            "max_decoded_depth",
            "max_queued_messages",
            "max_status_sessions",
            "max_status_streams",
        ):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise TypeError(f"Config.{name} must be an int, received {value!r}.")
        if self.max_ahead_steps < self.window_steps:
            raise ValueError(
                f"Config.max_ahead_steps must be >= window_steps, received {self.max_ahead_steps}"
                f" < {self.window_steps}."
            )
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                "Config.heartbeat_timeout_s must exceed heartbeat_interval_s, received "
                f"{self.heartbeat_timeout_s} <= {self.heartbeat_interval_s}."
            )

    def replace(self, **changes: float) -> Config:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown Config fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**data)  # type: ignore[arg-type]
