"""The worker's side of the protocol, shared by every kind of worker.

`protocol` (a sans-IO state machine: phases, window rule, due decisions),
`apply` (carrying decisions out on a model), `batches` (the batch-log buffer),
`session` (the protocol driven over one connection, on one event loop),
`threaded` (that session for a training thread), `context` (who a worker is).
`distcb.keras` adapts Keras to it; `distcb.testing`'s scripted workers use it as is.
"""
