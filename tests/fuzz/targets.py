"""Every fuzz target by name (:mod:`tests.fuzz.p2p`, :mod:`tests.fuzz.app`)."""

from __future__ import annotations

from tests.fuzz.app import APP_TARGETS
from tests.fuzz.harness import Hang, LoggedFailure, Target, check, seeds
from tests.fuzz.p2p import P2P_TARGETS

__all__ = ["TARGETS", "Target", "Hang", "LoggedFailure", "check", "seeds"]

#: name -> target, the libp2p decoders first.
TARGETS: dict[str, Target] = {t.name: t for t in P2P_TARGETS + APP_TARGETS}
