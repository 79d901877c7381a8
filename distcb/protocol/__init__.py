"""The wire vocabulary shared by the coordinator and every worker: errors, config,
log values, decisions (with the window rule) and messages. Imports nothing of
distcb's other layers, and no optional dependency."""
