"""The coordinator: one engine per job (`Coordinator`), its roster of workers, the
aggregation of their logs, the model proxy callbacks see, and the runtime sinks use."""

from distcb.coordinator.engine import Coordinator

__all__ = ["Coordinator"]
