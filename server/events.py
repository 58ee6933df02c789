"""Moved: the change feed and ``wait_event`` live in ``server.predictions.feed``. This name stays
only until the worker supervisor imports ``wait_event`` from there."""

from server.predictions.feed import wait_event

__all__ = ["wait_event"]
