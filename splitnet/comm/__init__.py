"""Communication: the transport, the meter and the exchange operations layers call."""

from splitnet.comm.meter import Meter
from splitnet.comm.transport import StalledExchange, Transport

__all__ = ["Meter", "StalledExchange", "Transport"]
