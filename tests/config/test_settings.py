"""Config file decoding, options and resolved settings."""

import base64
import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from aicn.config import (
    DBC_PSK_HEX,
    DEFAULT_LISTEN,
    AIModel,
    Config,
    ConfigError,
    Options,
    config_to_json,
    load_config,
    load_settings,
    parse_config,
    resolve_settings,
    write_config,
)
from aicn.p2p.keys import KeyType, PrivateKey

ETC = Path(__file__).resolve().parents[2] / "etc"
BOOT1 = "/ip4/122.99.183.54/tcp/6001/p2p/16Uiu2HAmRTpigc7jAbsLndB2xDEBMAXLb887SBEFhfdJeEJNtqRM"
BOOT2 = "/ip4/8.219.75.114/tcp/6001/p2p/16Uiu2HAmS4CErxrmPryJbbEX2HFQbLK8r8xCA5rmzdSU59rHc9AF"
KEY = PrivateKey.from_raw(KeyType.Secp256k1, bytes(range(1, 33)))


def go_config(**overrides):
    """A config as the Go node's ``host -init client`` writes it (digest §6.2)."""
    conf = {
        "Bootstrap": [BOOT1, BOOT2],
        "Addresses": ["/ip4/0.0.0.0/tcp/7001", "/ip6/::/tcp/7001"],
        "API": {"Addr": "127.0.0.1:7002"},
        "Identity": {
            "PeerID": str(KEY.peer_id()),
            "PrivKey": base64.b64encode(KEY.marshal()).decode(),
        },
        "Swarm": {
            "ConnMgr": {"Type": "basic", "GracePeriod": "60s", "HighWater": 400, "LowWater": 100},
            "DisableNatPortMap": False,
            "RelayClient": {"Enabled": False, "StaticRelays": []},
            "RelayService": {"Enabled": False},
            "EnableHolePunching": False,
            "EnableAutoNATService": True,
            "DialTimeout": "",
        },
        "Pubsub": {"Enabled": True, "Router": "floodsub", "FloodPublish": True},
        "Routing": {"Type": "dhtclient", "ProtocolPrefix": "/dbc"},
        "App": {
            "LogLevel": "info",
            "LogFile": "/home/dbc/host.log",
            "LogOutput": "file",
            "PreSharedKey": DBC_PSK_HEX,
            "TopicName": "DeepBrainChain",
            "Datastore": "/home/dbc/datastore",
            "IpfsStorageAPI": "",
            "PeersCollect": {"Enabled": False, "HeartbeatInterval": "180s", "ClientProject": ""},
            "AutoUpgrade": {"Enabled": False, "TimeInterval": "1h"},
        },
        "AIProjects": [
            {
                "Project": "DecentralGPT",
                "Models": [
                    {"Model": "Llama3-70B", "API": "http://127.0.0.1:1042/v1/chat/completions", "Type": 0},
                    {"Model": "Qwen2-72B", "API": "http://127.0.0.1:1043/v1/chat/completions", "Type": 0, "CID": "c1"},
                ],
            }
        ],
    }
    conf.update(overrides)
    return conf


class GoConfigTests(SynchronousTestCase):
    def test_go_generated_config_loads_unchanged(self):
        config, warnings = parse_config(go_config())
        self.assertEqual(warnings, [])
        self.assertEqual(config.bootstrap, (BOOT1, BOOT2))
        self.assertEqual(config.addresses, ("/ip4/0.0.0.0/tcp/7001", "/ip6/::/tcp/7001"))
        self.assertEqual(config.api.addr, "127.0.0.1:7002")
        self.assertEqual(config.identity.peer_id, str(KEY.peer_id()))
        self.assertTrue(config.identity.priv_key.startswith("CAISI"))
        self.assertEqual(config.swarm.conn_mgr.grace_period, 60.0)
        self.assertTrue(config.swarm.enable_autonat_service)
        self.assertIsNone(config.swarm.dial_timeout)
        self.assertEqual(config.pubsub.router, "floodsub")
        self.assertEqual(config.routing.type, "dhtclient")
        self.assertEqual(config.app.pre_shared_key, DBC_PSK_HEX)
        self.assertEqual(config.app.peers_collect.heartbeat_interval, 180.0)
        self.assertEqual(config.app.log_output, "file")
        self.assertEqual(
            config.ai_projects[0].models[1],
            AIModel(model="Qwen2-72B", api="http://127.0.0.1:1043/v1/chat/completions", type=0, cid="c1"),
        )

        s = resolve_settings(config, {})
        self.assertEqual(s.listen, ("/ip4/0.0.0.0/tcp/7001", "/ip6/::/tcp/7001"))
        self.assertEqual((s.api_host, s.api_port), ("127.0.0.1", 7002))
        self.assertEqual(s.psk, bytes.fromhex(DBC_PSK_HEX))
        self.assertEqual(s.dht_mode, "client")
        self.assertEqual(s.kad_protocol, "/dbc/kad/1.0.0")
        self.assertEqual(s.data_dir, Path("/home/dbc/datastore"))
        self.assertEqual(s.identity_priv_key, KEY.marshal())
        self.assertEqual(s.identity_peer_id, str(KEY.peer_id()))
        self.assertEqual(s.heartbeat_interval, 180.0)
        self.assertFalse(s.collector)

    def test_server_profile(self):
        conf = go_config()
        conf["Routing"]["Type"] = "dhtserver"
        conf["Swarm"]["RelayService"]["Enabled"] = True
        conf["App"]["PeersCollect"]["Enabled"] = True
        s = resolve_settings(parse_config(conf)[0])
        self.assertEqual(s.dht_mode, "server")
        self.assertTrue(s.relay_service)
        self.assertTrue(s.collector)

    def test_keys_case_insensitive_at_every_level(self):
        conf = {
            "bootstrap": [BOOT1],
            "api": {"addr": "127.0.0.1:9000"},
            "SWARM": {"connmgr": {"graceperiod": "5s", "HIGHWATER": 10, "lowWater": 5}},
            "app": {"presharedkey": "", "peerscollect": {"ENABLED": True}},
            "aiprojects": [{"project": "p", "models": [{"model": "m", "api": "http://x", "TYPE": 3}]}],
        }
        config, warnings = parse_config(conf)
        self.assertEqual(warnings, [])
        self.assertEqual(config.bootstrap, (BOOT1,))
        self.assertEqual(config.api.addr, "127.0.0.1:9000")
        self.assertEqual(config.swarm.conn_mgr.grace_period, 5.0)
        self.assertEqual((config.swarm.conn_mgr.high_water, config.swarm.conn_mgr.low_water), (10, 5))
        self.assertEqual(config.app.pre_shared_key, "")
        self.assertTrue(config.app.peers_collect.enabled)
        self.assertEqual(config.ai_projects[0].models[0].type, 3)

    def test_last_matching_key_wins(self):
        # encoding/json assigns every matching key in turn.
        config, _ = parse_config({"API": {"addr": "127.0.0.1:1", "Addr": "127.0.0.1:2"}})
        self.assertEqual(config.api.addr, "127.0.0.1:2")

    def test_null_leaves_default(self):
        config, _ = parse_config({"App": {"TopicName": None}, "Bootstrap": None, "Swarm": None})
        self.assertEqual(config.app.topic_name, "DeepBrainChain")
        self.assertEqual(config.bootstrap, ())

    def test_unknown_keys_warn(self):
        config, warnings = parse_config({"Foo": 1, "Swarm": {"ConnMgr": {"Bar": True}}, "AIProjects": [{"Project": "p", "X": 1}]})
        self.assertEqual(
            warnings,
            [
                "unknown config key Swarm.ConnMgr.Bar (ignored)",
                "unknown config key AIProjects[0].X (ignored)",
                "unknown config key Foo (ignored)",
            ],
        )

    def test_defaults(self):
        config, warnings = parse_config({})
        self.assertEqual(warnings, [])
        self.assertEqual(config, Config())
        cm = config.swarm.conn_mgr
        self.assertEqual((cm.type, cm.grace_period, cm.high_water, cm.low_water), ("basic", 20.0, 400, 100))
        self.assertEqual(config.app.peers_collect.heartbeat_interval, 60.0)
        self.assertEqual(config.app.topic_name, "DeepBrainChain")
        self.assertEqual(config.routing.protocol_prefix, "/dbc")
        self.assertEqual(config.app.pre_shared_key, DBC_PSK_HEX)
        self.assertEqual(config.api.max_body_bytes, 1 << 20)

    def test_empty_strings_mean_go_defaults(self):
        conf = {
            "Swarm": {"ConnMgr": {"Type": "", "GracePeriod": "", "HighWater": 0, "LowWater": 0}},
            "Routing": {"Type": "", "ProtocolPrefix": ""},
            "App": {"LogLevel": "", "PreSharedKey": "", "TopicName": "", "PeersCollect": {"HeartbeatInterval": ""}},
        }
        config, _ = parse_config(conf)
        self.assertEqual(config.swarm.conn_mgr, Config().swarm.conn_mgr)
        self.assertEqual(config.routing.type, "auto")
        self.assertEqual(config.routing.protocol_prefix, "/ipfs")  # as go-libp2p-kad-dht
        self.assertEqual(config.app.pre_shared_key, "")
        self.assertIsNone(resolve_settings(config).psk)
        self.assertEqual(config.app.topic_name, "DeepBrainChain")

    def test_invalid_values_name_the_key(self):
        cases = [
            ({"Swarm": {"ConnMgr": {"GracePeriod": "2x"}}}, 'Swarm.ConnMgr.GracePeriod: invalid duration "2x"'),
            ({"Swarm": {"ConnMgr": {"HighWater": "400"}}}, "Swarm.ConnMgr.HighWater: expected an integer"),
            ({"Swarm": {"ConnMgr": {"HighWater": 1.5}}}, "Swarm.ConnMgr.HighWater: expected an integer"),
            ({"Swarm": {"ConnMgr": {"HighWater": 10, "LowWater": 20}}}, "Swarm.ConnMgr: LowWater (20) is above"),
            ({"Swarm": {"ConnMgr": {"Type": "fancy"}}}, "Swarm.ConnMgr.Type: invalid value 'fancy'"),
            ({"Swarm": {"DisableNatPortMap": "yes"}}, "Swarm.DisableNatPortMap: expected true or false"),
            ({"Swarm": {"DialTimeout": "-1s"}}, "Swarm.DialTimeout: duration '-1s' must be positive"),
            ({"Swarm": []}, "Swarm: expected a JSON object"),
            ({"Bootstrap": ["/ip4/1.2.3.4/tcp/1"]}, "Bootstrap[0]: multiaddr '/ip4/1.2.3.4/tcp/1' has no /p2p/"),
            ({"Bootstrap": [BOOT1, "/ip4/1.2.3/tcp/1/p2p/x"]}, "Bootstrap[1]: invalid multiaddr"),
            ({"Bootstrap": "x"}, "Bootstrap: expected a JSON array"),
            ({"Addresses": ["nonsense"]}, "Addresses[0]: invalid multiaddr"),
            ({"Addresses": [5]}, "Addresses[0]: expected a string"),
            ({"API": {"Addr": "localhost"}}, "API.Addr: invalid address"),
            ({"API": {"Addr": "127.0.0.1:70000"}}, "API.Addr: port out of range"),
            ({"API": {"Envelope": "v0.2"}}, "API.Envelope: invalid value 'v0.2'; expected one of v0.1.2"),
            ({"API": {"ImageEditMaxBodyBytes": (256 << 20) + 1}}, "API.ImageEditMaxBodyBytes: 268435457 out"),
            ({"API": {"ImageEditMaxBodyBytes": -1}}, "API.ImageEditMaxBodyBytes: -1 out of range"),
            ({"App": {"PreSharedKey": "abcd"}}, "App.PreSharedKey: pre-shared key must be 64 hex characters"),
            ({"App": {"PreSharedKey": "z" * 64}}, "App.PreSharedKey: pre-shared key is not hex"),
            ({"App": {"LogLevel": "loud"}}, "App.LogLevel: invalid log level 'loud'"),
            ({"App": {"LogOutput": "stderr+syslog"}}, "App.LogOutput: unknown output 'syslog'"),
            ({"App": {"PeersCollect": {"HeartbeatInterval": "0s"}}}, "App.PeersCollect.HeartbeatInterval"),
            ({"App": {"RequestTimeout": "0s"}}, "App.RequestTimeout: duration '0s' must be positive"),
            ({"App": {"RequestTimeout": "16m"}}, "App.RequestTimeout: at most 15m0s"),
            ({"App": {"RequestTimeout": 30}}, "App.RequestTimeout: expected a string"),
            ({"App": {"WireVersion": "v0.1.9"}},
             "App.WireVersion: invalid value 'v0.1.9'; expected one of v0.2.3"),
            ({"App": {"WireVersion": 2}}, "App.WireVersion: expected a string"),
            ({"Routing": {"Type": "dht"}}, "Routing.Type: invalid value 'dht'"),
            ({"Routing": {"ProtocolPrefix": "dbc"}}, "Routing.ProtocolPrefix"),
            ({"Pubsub": {"Router": "randomsub"}}, "Pubsub.Router: invalid value"),
            ({"Identity": {"PrivKey": "not base64!"}}, "Identity.PrivKey: not a base64 libp2p private key"),
            ({"Identity": {"PeerID": "QmNotAPeer"}}, "Identity.PeerID: invalid peer ID"),
            ({"AIProjects": [{"Project": ""}]}, "AIProjects[0].Project: must be a non-empty string"),
            ({"AIProjects": [{"Project": "p", "Models": [{"Model": "m", "Type": -1}]}]}, "AIProjects[0].Models[0].Type"),
            ([], "<top>: expected a JSON object"),
        ]
        for conf, message in cases:
            with self.assertRaises(ConfigError, msg=conf) as ctx:
                parse_config(conf)
            self.assertIn(message, str(ctx.exception))

    def test_request_timeout(self):
        self.assertIsNone(parse_config({})[0].app.request_timeout)
        config, _ = parse_config({"App": {"RequestTimeout": "45s"}})
        self.assertEqual(config.app.request_timeout, 45.0)
        self.assertEqual(config_to_json(config)["App"]["RequestTimeout"], "45s")
        self.assertEqual(parse_config(config_to_json(config))[0], config)

    def test_wire_version(self):
        config, _ = parse_config({})
        self.assertEqual(config.app.wire_version, "v0.2.3")
        self.assertEqual(config_to_json(config)["App"]["WireVersion"], "v0.2.3")
        config, warnings = parse_config({"app": {"wireversion": "V0.1.2"}})
        self.assertEqual((config.app.wire_version, warnings), ("v0.1.2", []))
        self.assertEqual(parse_config(config_to_json(config))[0], config)
        self.assertEqual(resolve_settings(config).wire_version, "v0.1.2")
        self.assertEqual(resolve_settings(parse_config({})[0]).wire_version, "v0.2.3")

    def test_api_envelope_and_image_edit_cap(self):
        config, _ = parse_config({})
        self.assertEqual((config.api.envelope, config.api.image_edit_max_body_bytes), ("v0.1.2", 32 << 20))
        config, warnings = parse_config({"api": {"envelope": "V0.2.3", "ImageEditMaxBodyBytes": 5 << 20}})
        self.assertEqual(warnings, [])
        self.assertEqual((config.api.envelope, config.api.image_edit_max_body_bytes), ("v0.2.3", 5 << 20))
        self.assertEqual(config_to_json(config)["API"]["Envelope"], "v0.2.3")
        self.assertEqual(parse_config(config_to_json(config))[0], config)
        s = resolve_settings(config, config_path="/tmp/x/aicn.json")
        self.assertEqual((s.api_envelope, s.image_edit_max_body_bytes), ("v0.2.3", 5 << 20))
        self.assertEqual(s.config_path, Path("/tmp/x/aicn.json"))
        self.assertIsNone(resolve_settings(config).config_path)

    def test_pubsub_disabled_warns(self):
        config, warnings = parse_config({"Pubsub": {"Enabled": False}})
        self.assertEqual(warnings, ["Pubsub.Enabled: pubsub is always on (false ignored)"])

    def test_json_round_trip(self):
        config, _ = parse_config(go_config())
        again, warnings = parse_config(json.loads(json.dumps(config_to_json(config))))
        self.assertEqual(warnings, [])
        # (AutoUpgrade is not written back; here it holds its defaults.)
        self.assertEqual(again, config)

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
            lambda children: st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["Swarm", "App", "API", "ConnMgr", "Bootstrap", "AIProjects", "Models", "x"]),
                children,
                max_size=4,
            ),
            max_leaves=12,
        )
    )
    def test_garbage_raises_only_config_error(self, data):
        try:
            parse_config(data)
        except ConfigError:
            pass


class FileTests(SynchronousTestCase):
    def test_load_config_errors(self):
        path = Path(self.mktemp())
        with self.assertRaises(ConfigError) as ctx:
            load_config(path)
        self.assertIn("cannot read config file", str(ctx.exception))
        path.write_text("{not json")
        with self.assertRaises(ConfigError) as ctx:
            load_config(path)
        self.assertIn("is not valid JSON", str(ctx.exception))
        path.write_text('{"Swarm": {"ConnMgr": {"GracePeriod": "2x"}}}')
        with self.assertRaises(ConfigError) as ctx:
            load_config(path)
        self.assertIn(f'{path}: Swarm.ConnMgr.GracePeriod: invalid duration "2x"', str(ctx.exception))

    def test_write_config(self):
        path = Path(self.mktemp())
        config = parse_config(go_config())[0]
        write_config(path, config)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(load_config(path)[0], config)
        self.assertTrue(path.read_text().startswith('{\n  "Bootstrap"'))
        with self.assertRaises(FileExistsError):
            write_config(path, config)
        write_config(path, Config(), overwrite=True)
        self.assertEqual(load_config(path)[0], Config())

    def test_example_files(self):
        config, warnings = load_config(ETC / "aicn.example.json")
        self.assertEqual(warnings, [])
        self.assertEqual(config.bootstrap, ())
        self.assertEqual(config.routing.type, "dhtclient")
        mainnet, warnings = load_config(ETC / "dbc-mainnet.json")
        self.assertEqual(warnings, [])
        self.assertEqual(mainnet.bootstrap, (BOOT1, BOOT2))
        self.assertEqual(mainnet.app.pre_shared_key, DBC_PSK_HEX)

    def test_relative_datastore_is_relative_to_config_file(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "node.json"
        path.write_text('{"App": {"Datastore": "data"}}')
        s = load_settings({"config": str(path)})
        self.assertEqual(s.data_dir, directory.absolute() / "data")

    def test_load_settings_logs_warnings(self):
        path = Path(self.mktemp())
        path.write_text('{"Nope": 1}')
        events = []
        from twisted.logger import Logger

        log = Logger(observer=events.append)
        load_settings({"config": str(path)}, log=log)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["warning"], "unknown config key Nope (ignored)")


class ResolveTests(SynchronousTestCase):
    def test_builtin_defaults(self):
        s = resolve_settings(Config(), {})
        self.assertEqual(s.listen, DEFAULT_LISTEN)
        self.assertEqual((s.api_host, s.api_port), ("127.0.0.1", 6000))
        self.assertEqual(s.data_dir, Path(os.path.expanduser("~/.aicn")))
        self.assertEqual(s.psk, bytes.fromhex(DBC_PSK_HEX))
        self.assertEqual(s.bootstrap, ())
        self.assertEqual(s.dht_mode, "auto")
        self.assertFalse(s.collector or s.relay_service)
        self.assertIsNone(s.api_token)
        self.assertEqual(s.max_body_bytes, 1 << 20)
        self.assertEqual(s.log_level, "info")
        self.assertEqual(s.topic, "DeepBrainChain")
        self.assertEqual(s.kad_protocol_prefix, "/dbc")
        self.assertEqual(s.heartbeat_interval, 60.0)
        self.assertEqual(s.key_type, KeyType.Secp256k1)
        self.assertIsNone(s.ipfs_api)

    def test_options_override_file(self):
        config = parse_config(go_config())[0]
        s = resolve_settings(
            config,
            {
                "port": "8000",
                "api-host": "::1",
                "listen": ["/ip4/127.0.0.1/tcp/9001"],
                "data-dir": "/tmp/x",
                "bootstrap": [BOOT2],
                "psk": "none",
                "key-type": "ed25519",
                "dht-mode": "server",
                "collector": 1,
                "relay-service": 1,
                "api-token": "secret",
                "log-level": "debug",
            },
        )
        self.assertEqual(s.listen, ("/ip4/127.0.0.1/tcp/9001",))
        self.assertEqual((s.api_host, s.api_port), ("::1", 8000))
        self.assertEqual(s.data_dir, Path("/tmp/x"))
        self.assertEqual(s.bootstrap, (BOOT2,))
        self.assertIsNone(s.psk)
        self.assertEqual(s.key_type, KeyType.Ed25519)
        self.assertEqual(s.dht_mode, "server")
        self.assertTrue(s.collector and s.relay_service)
        self.assertEqual(s.api_token, "secret")
        self.assertEqual(s.log_level, "debug")

    def test_port_only_keeps_file_host(self):
        config = parse_config({"API": {"Addr": "[::1]:7002"}})[0]
        s = resolve_settings(config, {"port": 7100})
        self.assertEqual((s.api_host, s.api_port), ("::1", 7100))

    def test_psk_option(self):
        s = resolve_settings(Config(), {"psk": "AB" * 32})
        self.assertEqual(s.psk, b"\xab" * 32)

    def test_bad_options(self):
        cases = [
            ({"port": "x"}, "--port"),
            ({"port": "70000"}, "--port"),
            ({"psk": "abc"}, "--psk"),
            ({"psk": ""}, "--psk"),
            ({"listen": ["bad"]}, "--listen"),
            ({"bootstrap": ["/ip4/1.2.3.4/tcp/1"]}, "--bootstrap"),
            ({"dht-mode": "both"}, "--dht-mode"),
            ({"key-type": "rsa"}, "--key-type"),
            ({"log-level": "verbose"}, "--log-level"),
        ]
        for options, prefix in cases:
            with self.assertRaises(ConfigError, msg=options) as ctx:
                resolve_settings(Config(), options)
            self.assertTrue(str(ctx.exception).startswith(prefix), str(ctx.exception))

    def test_usage_options(self):
        opts = Options()
        opts.parseOptions(
            ["--listen", "/ip4/127.0.0.1/tcp/1", "--listen", "/ip6/::1/tcp/1", "--bootstrap", BOOT1,
             "--collector", "--port", "6100"]
        )
        s = resolve_settings(Config(), opts)
        self.assertEqual(s.listen, ("/ip4/127.0.0.1/tcp/1", "/ip6/::1/tcp/1"))
        self.assertEqual(s.bootstrap, (BOOT1,))
        self.assertTrue(s.collector)
        self.assertFalse(s.relay_service)
        self.assertEqual(s.api_port, 6100)

    def test_usage_options_validate(self):
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--psk", "zz"])


class ListenNoneTests(SynchronousTestCase):
    def test_listen_none_means_dial_out_only(self):
        settings = resolve_settings(Config(), {"listen": ["none"]})
        self.assertEqual(settings.listen, ())

    def test_listen_none_with_addresses_is_an_error(self):
        with self.assertRaises(ConfigError):
            resolve_settings(Config(), {"listen": ["none", "/ip4/127.0.0.1/tcp/0"]})


class RelayServiceLimitTests(SynchronousTestCase):
    def test_defaults_suit_model_streams(self):
        from aicn.service import relay_limits

        limits = relay_limits(parse_config({})[0].swarm.relay_service)
        self.assertEqual((limits.duration, limits.data), (3600, 1 << 30))

    def test_configured_limits_reach_the_relay(self):
        from aicn.service import relay_limits

        config, warnings = parse_config({"Swarm": {"RelayService": {
            "Enabled": True, "MaxDuration": "10m", "MaxData": 1048576, "ReservationTTL": "30m",
            "MaxReservations": 4, "MaxReservationsPerIP": 2, "MaxCircuits": 8, "MaxCircuitsPerPeer": 1}}})
        self.assertEqual(warnings, [])
        limits = relay_limits(config.swarm.relay_service)
        self.assertEqual((limits.duration, limits.data, limits.reservation_ttl), (600, 1048576, 1800))
        self.assertEqual((limits.max_reservations, limits.max_reservations_per_ip), (4, 2))
        self.assertEqual((limits.max_circuits, limits.max_circuits_per_peer), (8, 1))
        again, _ = parse_config(json.loads(json.dumps(config_to_json(config))))
        self.assertEqual(again.swarm.relay_service, config.swarm.relay_service)

    def test_invalid_limit_names_the_key(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config({"Swarm": {"RelayService": {"MaxCircuits": 0}}})
        self.assertIn("Swarm.RelayService.MaxCircuits", str(cm.exception))


class AutoNATServiceConfigTests(SynchronousTestCase):
    """``Swarm.AutoNATServiceAllowPrivate`` (aicn extension beside Go's ``EnableAutoNATService``)."""

    def test_default_off(self):
        config, _ = parse_config(go_config())
        self.assertFalse(config.swarm.autonat_service_allow_private)
        self.assertFalse(resolve_settings(config).autonat_allow_private)

    def test_parsed_resolved_and_round_tripped(self):
        config, warnings = parse_config({"Swarm": {"EnableAutoNATService": True, "autonatserviceallowprivate": True}})
        self.assertEqual(warnings, [])
        self.assertTrue(config.swarm.autonat_service_allow_private)
        s = resolve_settings(config)
        self.assertTrue(s.autonat_service and s.autonat_allow_private)
        written = config_to_json(config)
        self.assertIs(written["Swarm"]["AutoNATServiceAllowPrivate"], True)
        again, warnings = parse_config(json.loads(json.dumps(written)))
        self.assertEqual((again, warnings), (config, []))

    def test_invalid_value_names_the_key(self):
        with self.assertRaises(ConfigError) as cm:
            parse_config({"Swarm": {"AutoNATServiceAllowPrivate": "yes"}})
        self.assertIn("Swarm.AutoNATServiceAllowPrivate: expected true or false", str(cm.exception))

    def test_without_the_service_warns(self):
        config, warnings = parse_config({"Swarm": {"AutoNATServiceAllowPrivate": True}})
        self.assertEqual(len(warnings), 1)
        self.assertIn("Swarm.AutoNATServiceAllowPrivate", warnings[0])
        self.assertIn("EnableAutoNATService", warnings[0])

    def test_reaches_the_service(self):
        from twisted.internet.task import Clock

        from aicn.service import NodeService

        for allow in (False, True):
            config, _ = parse_config({"Swarm": {"EnableAutoNATService": True, "AutoNATServiceAllowPrivate": allow}})
            node = NodeService(resolve_settings(config, {"data_dir": self.mktemp()}), Clock())
            self.addCleanup(node.db.close)
            self.assertIs(node.autonat_service.allow_private, allow)
            self.assertFalse(node.autonat_service.allow_loopback)
        node = NodeService(resolve_settings(Config(), {"data_dir": self.mktemp()}), Clock())
        self.addCleanup(node.db.close)
        self.assertIsNone(node.autonat_service)


class UnhonouredGoKeysTests(SynchronousTestCase):
    """Go keys that ask for what aicn does not do load, with a warning that says so."""

    def test_each_request_is_named(self):
        cases = [
            ({"Swarm": {"EnableHolePunching": True}}, "Swarm.EnableHolePunching: aicn does not punch holes"),
            ({"App": {"PeersCollect": {"ClientProject": "p"}}},
             "App.PeersCollect.ClientProject: aicn does not gate inbound connections"),
            ({"Pubsub": {"Router": "gossipsub"}}, "Pubsub.Router: aicn routes pubsub with floodsub"),
        ]
        for data, warning in cases:
            config, warnings = parse_config(data)
            self.assertEqual(len(warnings), 1, data)
            self.assertTrue(warnings[0].startswith(warning), warnings)

    def test_the_defaults_and_their_round_trip_warn_of_nothing(self):
        config, warnings = parse_config({"Swarm": {"EnableHolePunching": False, "DisableNatPortMap": False},
                                         "Pubsub": {"Router": "floodsub", "FloodPublish": True}})
        self.assertEqual(warnings, [])
        self.assertEqual(parse_config(config_to_json(Config()))[1], [])
        self.assertEqual(Config().pubsub.router, "floodsub")


class ResourceBoundConfigTests(SynchronousTestCase):
    """The listener's and the HTTP API's bounds (aicn extensions in ``Swarm`` and ``API``)."""

    def test_defaults(self):
        config, warnings = parse_config(go_config())
        self.assertEqual(warnings, [])
        s, api = config.swarm, config.api
        self.assertEqual((s.max_inbound_connections, s.max_pending_handshakes, s.handshake_timeout), (512, 64, 10.0))
        self.assertEqual((api.header_timeout, api.body_timeout, api.idle_timeout, api.max_connections),
                         (10.0, 30.0, 60.0, 1024))

    def test_parsed_round_tripped_and_zero_means_default(self):
        config, warnings = parse_config({
            "Swarm": {"MaxInboundConnections": 20, "MaxPendingHandshakes": 3, "HandshakeTimeout": "2s"},
            "API": {"HeaderTimeout": "1s", "BodyTimeout": "3s", "IdleTimeout": "5m", "MaxConnections": 7}})
        self.assertEqual(warnings, [])
        self.assertEqual((config.swarm.max_inbound_connections, config.swarm.max_pending_handshakes,
                          config.swarm.handshake_timeout), (20, 3, 2.0))
        self.assertEqual((config.api.header_timeout, config.api.body_timeout, config.api.idle_timeout,
                          config.api.max_connections), (1.0, 3.0, 300.0, 7))
        again, warnings = parse_config(json.loads(json.dumps(config_to_json(config))))
        self.assertEqual((again, warnings), (config, []))
        zero, _ = parse_config({"Swarm": {"MaxPendingHandshakes": 0}, "API": {"MaxConnections": 0}})
        self.assertEqual((zero.swarm.max_pending_handshakes, zero.api.max_connections), (64, 1024))

    def test_invalid_values_name_the_key(self):
        for conf, key in (({"Swarm": {"HandshakeTimeout": "0s"}}, "Swarm.HandshakeTimeout"),
                          ({"Swarm": {"MaxInboundConnections": -1}}, "Swarm.MaxInboundConnections"),
                          ({"API": {"HeaderTimeout": "soon"}}, "API.HeaderTimeout"),
                          ({"API": {"MaxConnections": "many"}}, "API.MaxConnections")):
            with self.assertRaises(ConfigError) as cm:
                parse_config(conf)
            self.assertIn(key, str(cm.exception))

    def test_reach_the_swarm(self):
        from twisted.internet.task import Clock

        from aicn.service import NodeService

        config, _ = parse_config({"Swarm": {"MaxInboundConnections": 20, "MaxPendingHandshakes": 3,
                                            "HandshakeTimeout": "2s", "DialTimeout": "4s"}})
        node = NodeService(resolve_settings(config, {"data_dir": self.mktemp()}), Clock())
        self.addCleanup(node.db.close)
        swarm = node.host.swarm
        self.assertEqual((swarm.max_inbound, swarm.max_pending_inbound), (20, 3))
        self.assertEqual((swarm.handshake_timeout, swarm.dial_timeout), (2.0, 4.0))

    def test_fd_limit_is_raised_to_the_hard_limit(self):
        import resource

        from aicn.service import raise_fd_limit

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        limit = raise_fd_limit(resolve_settings(Config()))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], limit)
        if hard != resource.RLIM_INFINITY:
            self.assertEqual(limit, hard)
