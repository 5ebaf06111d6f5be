"""The node's command-line options (``twistd aicn …``)."""

from __future__ import annotations

from twisted.python import usage

from aicn.config.schema import DEFAULT_API_HOST, DEFAULT_API_PORT, DEFAULT_DATA_DIR, Config, ConfigError

__all__ = ["Options"]


class Options(usage.Options):
    """Command-line options of the node (for the twistd plugin).

    Every option defaults to ``None`` ("not given") so that the config file
    value is used unless the flag is given; :func:`resolve_settings` applies
    the built-in defaults.
    """

    optFlags = [
        ["collector", None, "Store peers' heartbeats (App.PeersCollect.Enabled)."],
        ["relay-service", None, "Run a circuit relay v2 service (Swarm.RelayService.Enabled)."],
    ]
    optParameters = [
        ["config", "c", None, "JSON config file (Go node format)."],
        ["port", "p", None, f"HTTP API port [default: {DEFAULT_API_PORT}]."],
        ["api-host", None, None, f"HTTP API listen host [default: {DEFAULT_API_HOST}]."],
        ["data-dir", "d", None, f"Data directory (peer.key, aicn.db) [default: {DEFAULT_DATA_DIR}]."],
        ["psk", None, None, "Private network key: 64 hex characters, or 'none' [default: the DBC key]."],
        ["key-type", None, None, "Key type for a new peer.key: secp256k1 or ed25519 [default: secp256k1]."],
        ["dht-mode", None, None, "DHT mode: client, server or auto [default: auto]."],
        ["api-token", None, None, "Bearer token required by the HTTP API."],
        ["log-level", None, None, "Log level: debug, info, warn, error [default: info]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["bootstrap"] = []

    def opt_listen(self, addr: str) -> None:
        """libp2p listen multiaddr (repeatable), or 'none' to only dial out [default: /ip4/0.0.0.0/tcp/6001 and /ip6/::/tcp/6001]."""
        self["listen"].append(addr)

    def opt_bootstrap(self, addr: str) -> None:
        """Bootstrap multiaddr with /p2p/ (repeatable); replaces the config's list."""
        self["bootstrap"].append(addr)

    def postOptions(self) -> None:
        # Validate early so that twistd prints a usage error.
        try:
            from aicn.config.settings import resolve_settings  # settings reads Options' names

            resolve_settings(Config(), self)
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
