"""Faust's ``Monitor`` without the four hooks it runs for every message (``ATTNFLOW_FAUST_MESSAGE_STATS``).

Faust always installs a ``Monitor``; per message it calls ``on_message_in`` / ``on_message_out`` and
``on_stream_event_in`` / ``on_stream_event_out``, which only feed Faust's own stats views. attnflow counts the
same per batch (``streams/metrics.py``), so ``LeanMonitor`` empties those four and keeps the rest (commits,
end offsets, rebalances). The cost it saves is measured in docs/performance.md; ``true`` runs the stock one.
"""
from __future__ import annotations

from faust.sensors.monitor import Monitor


class LeanMonitor(Monitor):
    """Faust's Monitor, less the four hooks it runs for every message and stream event.

    >>> from types import SimpleNamespace
    >>> from faust.types import TP
    >>> for monitor in (Monitor(), LeanMonitor()):
    ...     message = SimpleNamespace(time_in=None)
    ...     monitor.on_message_in(TP("events", 0), 7, message)
    ...     print(type(monitor).__name__, monitor.messages_received_total, message.time_in is not None)
    Monitor 1 True
    LeanMonitor 0 False
    """

    def on_message_in(self, tp, offset, message) -> None:
        pass

    def on_stream_event_in(self, tp, offset, stream, event) -> None:
        return None

    def on_stream_event_out(self, tp, offset, stream, event, state=None) -> None:
        pass

    def on_message_out(self, tp, offset, message) -> None:
        pass
