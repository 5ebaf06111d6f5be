"""Circuit relay v2 (specs: relay/circuit-v2.md).

* :mod:`.codec`: hop/stop messages, framing, reservation vouchers (pure);
* :mod:`.resources`: :class:`RelayLimits`, reservation and circuit accounting (pure);
* :mod:`.transport`: relayed connections (the stop protocol, dialing
  ``/p2p-circuit`` addresses); the :class:`~aicn.p2p.host.Host` installs it by
  default;
* :mod:`.hop`: :class:`RelayService`, the relay itself;
* :mod:`.client`: :class:`RelayClient`, keeping reservations and announcing
  circuit addresses.

Our relay's defaults (1 h and 1 GiB per circuit) carry model traffic; the Go
network's relays (go-libp2p defaults, 2 min / 128 KiB) cannot, and neither can
js's.

DCUtR (``/libp2p/dcutr``, hole punching) is not implemented.  It would take:
a handler and initiator for the CONNECT/SYNC exchange (a small protobuf with
observed addresses) run over a freshly relayed connection; an RTT
measurement; simultaneous TCP connects from both sides at the agreed time,
which needs the swarm to dial from its listen port (``SO_REUSEPORT``, which
Twisted's TCP endpoints do not expose: a custom ``socket`` + ``adoptStreamConnection``
path) and to treat a simultaneous open as one connection (the multistream
``/libp2p/simultaneous-connect`` extension or the initiator rule of the
spec); and migrating streams from the relayed to the direct connection
(callers re-open streams).  AutoNAT's observed addresses are the inputs.
"""

from aicn.p2p.relay.client import RelayClient, RelayReservation
from aicn.p2p.relay.codec import HOP_PROTOCOL, STOP_PROTOCOL, Limit, RelayCodecError, Status
from aicn.p2p.relay.hop import RelayService
from aicn.p2p.relay.resources import RelayLimits
from aicn.p2p.relay.transport import CircuitTransport, RelayError, is_circuit

__all__ = [
    "HOP_PROTOCOL",
    "STOP_PROTOCOL",
    "CircuitTransport",
    "Limit",
    "RelayClient",
    "RelayCodecError",
    "RelayError",
    "RelayLimits",
    "RelayReservation",
    "RelayService",
    "Status",
    "is_circuit",
]
