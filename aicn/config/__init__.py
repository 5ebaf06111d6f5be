"""Node configuration: the Go node's JSON config file, command-line options,
and the resolved :class:`NodeSettings` that the rest of the node uses.

One module a job:

* :mod:`~aicn.config.schema` -- the typed model of the file and its defaults;
* :mod:`~aicn.config.gojson` -- Go ``encoding/json`` key matching, shared with
  the HTTP API's request bodies;
* :mod:`~aicn.config.reader` -- the file (and single values) decoded and
  checked, with warnings for unknown keys;
* :mod:`~aicn.config.writer` -- a config written back in Go's format;
* :mod:`~aicn.config.options` -- ``twistd aicn`` command-line options;
* :mod:`~aicn.config.settings` -- file and options merged into
  :class:`NodeSettings`.

aicn extensions live where Go ignores them: ``API.Token`` (bearer token for
the HTTP API), ``API.MaxBodyBytes`` (request body limit, default 1 MiB),
``API.ImageEditMaxBodyBytes`` and ``API.Envelope`` (the response shape),
``App.RequestTimeout``, the relay service's limits and
``Swarm.AutoNATServiceAllowPrivate``.
"""

from aicn.config.options import Options
from aicn.config.reader import (
    load_config,
    parse_bootstrap_addr,
    parse_config,
    parse_host_port,
    parse_multiaddr,
    parse_psk,
)
from aicn.config.schema import (
    DBC_PSK_HEX,
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    MAX_REQUEST_TIMEOUT,
    AIModel,
    AIProject,
    APIConfig,
    AppConfig,
    AutoUpgradeConfig,
    Config,
    ConfigError,
    ConnMgrConfig,
    IdentityConfig,
    PeersCollectConfig,
    PubsubConfig,
    RelayClientConfig,
    RelayServiceConfig,
    RoutingConfig,
    SwarmConfig,
)
from aicn.config.settings import NodeSettings, load_settings, resolve_settings
from aicn.config.writer import config_to_json, update_bootstrap, write_config

__all__ = [
    "ConfigError",
    "DBC_PSK_HEX",
    "DEFAULT_LISTEN",
    "DEFAULT_DATA_DIR",
    "MAX_REQUEST_TIMEOUT",
    "ConnMgrConfig",
    "RelayClientConfig",
    "RelayServiceConfig",
    "SwarmConfig",
    "PubsubConfig",
    "RoutingConfig",
    "PeersCollectConfig",
    "AutoUpgradeConfig",
    "AppConfig",
    "APIConfig",
    "IdentityConfig",
    "AIModel",
    "AIProject",
    "Config",
    "NodeSettings",
    "Options",
    "parse_config",
    "load_config",
    "config_to_json",
    "write_config",
    "update_bootstrap",
    "resolve_settings",
    "load_settings",
    "parse_multiaddr",
    "parse_bootstrap_addr",
    "parse_host_port",
    "parse_psk",
]
