"""Drive a real Coordinator with scripted workers, to test coordinator callbacks.

    from distcb.testing import simulate
    from distcb.callbacks import EarlyStopping

    result = simulate(
        [EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)],
        epoch_logs=[[{"loss": 1.0, "val_loss": 0.9}], [{"loss": 0.8, "val_loss": 1.1}], ...],
        weights=["w0", "w1", ...],
    )
    assert result.stopped_epoch == 2 and result.weights == "w0"

`epoch_logs[epoch][rank]` is that worker's epoch logs; `batch_logs[epoch][step][rank]`
its batch logs (running means, as Keras 3 sends them). The scripted workers run
the same worker code as real ones (`distcb.worker`: the protocol state machine,
the window rule, the batch buffer, decision application) over a real transport
(``transport=``: "memory", the default, one event loop; "inproc", the thread
backend's; "websocket", a real `distcb.server.WebSocketServer` on loopback); only the
model is scripted. They stop consuming their scripts when told to stop.
"""

from __future__ import annotations

from distcb.testing.scripted import ScriptedModel, ScriptedWorker
from distcb.testing.simulation import TRANSPORTS as TRANSPORTS  # read by tests, not public
from distcb.testing.simulation import SimulationResult, asimulate, simulate
from distcb.worker.apply import AppliedDecision
from distcb.worker.protocol import DecisionArrival, StepBegun

__all__ = [
    "AppliedDecision",
    "DecisionArrival",
    "ScriptedModel",
    "ScriptedWorker",
    "SimulationResult",
    "StepBegun",
    "asimulate",
    "simulate",
]
