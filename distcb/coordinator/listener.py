"""`JobListener`: what the engine tells launchers, Tune's bridge and status pages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.logs import Logs
from distcb.protocol.messages import Saved

__all__ = ["JobListener", "Listener"]


class JobListener:
    """What the engine tells listeners (Tune's bridge, launchers, status pages): override
    what you need. Called on the event loop, in order; a listener must not block."""

    def epoch_released(self, epoch: int, logs: Logs, records: Sequence[DecisionRecord]) -> None:
        """Epoch `epoch`'s decisions went out to every worker."""
        return None

    def saved(self, message: Saved) -> None:
        """The chief reported a save (or its failure)."""
        return None

    def restarting(self, attempt: int, failure: BaseException) -> None:
        """Attempt `attempt` ended with a restartable `failure`; the workers stop and exit
        with the "retry me" code, and the next attempt waits for them to join again."""
        return None

    def ended(self, failure: BaseException | None) -> None:
        """The job ended (`on_train_end` ran and the sinks were closed)."""
        return None


class Listener(Protocol):
    """What `Coordinator.add_listener` takes: `JobListener`'s methods, by shape (a layer
    below the coordinator, such as the status page, cannot subclass it)."""

    def epoch_released(self, epoch: int, logs: Logs, records: Sequence[DecisionRecord]) -> None: ...

    def saved(self, message: Saved) -> None: ...

    def restarting(self, attempt: int, failure: BaseException) -> None: ...

    def ended(self, failure: BaseException | None) -> None: ...
