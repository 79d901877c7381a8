"""Close codes: why a channel was closed, as a websocket close frame carries it (RFC 6455 §7.4).

Codes 1000-1011 are the protocol's own; 4000-4999 are for applications: distcb
uses them for the bounds of `distcb.Config`, so that a peer cut off for
exceeding one can tell which from the code alone (the close reason says it in
words). Transports without close frames (memory, Ray) put the reason in the
error the peer receives.
"""

NORMAL = 1000
"""Done with the channel: the job finished or the peer said goodbye."""

GOING_AWAY = 1001
"""The coordinator is shutting down."""

POLICY_VIOLATION = 1008
"""A message that does not decode, or that is not valid in the rank's protocol state."""

MESSAGE_TOO_BIG = 1009
"""A message over `Config.max_message_bytes`."""

INTERNAL_ERROR = 1011
"""The transport failed on this end."""

JOIN_TIMEOUT = 4001
"""No join within `Config.first_message_timeout_s` after the websocket upgrade."""

FRAME_ENTRIES = 4002
"""A batch frame over `Config.max_frame_entries` entries."""

WINDOW = 4003
"""Batch steps beyond the window a rank may run ahead (`Config.window_steps` /
`Config.max_ahead_steps`): what the coordinator would otherwise have to buffer."""

STALLED = 4004
"""A rank the barrier waited on made no progress for `Config.stall_timeout_s`."""

BOUNDS: dict[int, str] = {
    JOIN_TIMEOUT: "Config.first_message_timeout_s",
    FRAME_ENTRIES: "Config.max_frame_entries",
    WINDOW: "Config.window_steps / Config.max_ahead_steps",
    STALLED: "Config.stall_timeout_s",
    MESSAGE_TOO_BIG: "Config.max_message_bytes",
}
"""The Config bound behind each code that stands for one."""
