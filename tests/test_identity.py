"""Node key loading/creation and the data directory."""

import base64
import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from aicn.config import ConfigError, parse_config, resolve_settings
from aicn.files import atomic_write
from aicn.identity import (
    KEY_FILE,
    IdentityError,
    ensure_data_dir,
    load_identity,
    load_node_key,
    load_or_create_key_file,
    read_key_file,
)
from aicn.p2p.keys import KeyType, PrivateKey

# The secp256k1 generator G: the public key of the private scalar 1.
G_COMPRESSED = bytes.fromhex("0279BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798")
GO_KEY_FILE = bytes.fromhex("08021220") + (1).to_bytes(32, "big")

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


# Peer ID computed by hand: identity multihash (0x00, length 37) of the
# PublicKey protobuf (Type=Secp256k1, Data=compressed point).
EXPECTED_PEER_ID = b58(b"\x00\x25" + b"\x08\x02\x12\x21" + G_COMPRESSED)


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())

    def test_go_format_key_file(self):
        ensure_data_dir(self.dir)
        (self.dir / KEY_FILE).write_bytes(GO_KEY_FILE)
        os.chmod(self.dir / KEY_FILE, 0o600)
        key = load_node_key(self.dir)
        self.assertTrue(EXPECTED_PEER_ID.startswith("16Uiu2HA"))
        self.assertEqual(str(key.peer_id()), EXPECTED_PEER_ID)
        self.assertEqual(key.public_key.marshal(), b"\x08\x02\x12\x21" + G_COMPRESSED)
        self.assertEqual((self.dir / KEY_FILE).read_bytes(), GO_KEY_FILE)

    def test_creates_key_and_keeps_it(self):
        key = load_node_key(self.dir)
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o700)
        path = self.dir / KEY_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        raw = path.read_bytes()
        self.assertEqual(raw[:4], b"\x08\x02\x12\x20")
        self.assertEqual(len(raw), 36)
        again = load_node_key(self.dir)
        self.assertEqual(again.peer_id(), key.peer_id())
        self.assertEqual(path.read_bytes(), raw)
        self.assertEqual([p.name for p in self.dir.iterdir()], [KEY_FILE])  # no temp files left

    def test_ed25519_new_key(self):
        key = load_node_key(self.dir, key_type="ed25519")
        self.assertEqual(key.key_type, KeyType.Ed25519)
        # The key type only matters for new keys.
        self.assertEqual(load_node_key(self.dir, key_type="secp256k1").peer_id(), key.peer_id())

    def test_corrupt_file_is_error_and_untouched(self):
        ensure_data_dir(self.dir)
        path = self.dir / KEY_FILE
        for garbage in [b"", b"\x08\x02\x12\x20" + b"\0" * 32, b"not a key at all", b"\x08\x02\x12\x05abc"]:
            path.write_bytes(garbage)
            with self.assertRaises(IdentityError) as ctx:
                load_node_key(self.dir)
            self.assertIn("is corrupt", str(ctx.exception))
            self.assertIn("refusing to replace", str(ctx.exception))
            self.assertEqual(path.read_bytes(), garbage)

    def test_config_key_wins(self):
        load_node_key(self.dir)
        config_key = PrivateKey.from_raw(KeyType.Secp256k1, (1).to_bytes(32, "big"))
        b64 = base64.b64encode(config_key.marshal()).decode()
        self.assertTrue(b64.startswith("CAISI"))
        self.assertEqual(str(load_node_key(self.dir, config_priv_key=b64).peer_id()), EXPECTED_PEER_ID)
        self.assertEqual(str(load_node_key(self.dir, config_priv_key=GO_KEY_FILE).peer_id()), EXPECTED_PEER_ID)

    def test_config_key_does_not_need_data_dir(self):
        load_node_key(self.dir, config_priv_key=GO_KEY_FILE)
        self.assertFalse(self.dir.exists())

    def test_peer_id_mismatch(self):
        other = PrivateKey.generate()
        with self.assertRaises(ConfigError) as ctx:
            load_node_key(self.dir, config_priv_key=GO_KEY_FILE, config_peer_id=str(other.peer_id()))
        message = str(ctx.exception)
        self.assertIn(str(other.peer_id()), message)
        self.assertIn(EXPECTED_PEER_ID, message)
        self.assertIn("does not match", message)
        # Also against peer.key.
        key = load_node_key(self.dir)
        with self.assertRaises(IdentityError):
            load_node_key(self.dir, config_peer_id=str(other.peer_id()))
        self.assertEqual(load_node_key(self.dir, config_peer_id=str(key.peer_id())).peer_id(), key.peer_id())

    def test_bad_config_key(self):
        with self.assertRaises(IdentityError):
            load_node_key(self.dir, config_priv_key="@@@")

    def test_data_dir_is_a_file(self):
        self.dir.write_bytes(b"x")
        with self.assertRaises(IdentityError):
            load_node_key(self.dir)

    def test_load_or_create_reports_creation(self):
        ensure_data_dir(self.dir)
        path = self.dir / "k"
        key, created = load_or_create_key_file(path)
        self.assertTrue(created)
        again, created = load_or_create_key_file(path)
        self.assertFalse(created)
        self.assertEqual(again.peer_id(), key.peer_id())
        self.assertEqual(read_key_file(path).peer_id(), key.peer_id())

    def test_atomic_write_never_overwrites_by_default(self):
        ensure_data_dir(self.dir)
        path = self.dir / "f"
        atomic_write(path, b"one")
        with self.assertRaises(FileExistsError):
            atomic_write(path, b"two")
        self.assertEqual(path.read_bytes(), b"one")
        atomic_write(path, b"three", overwrite=True)
        self.assertEqual(path.read_bytes(), b"three")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["f"])

    def test_load_identity_from_settings(self):
        key = PrivateKey.generate()
        config = parse_config(
            {"Identity": {"PeerID": str(key.peer_id()), "PrivKey": base64.b64encode(key.marshal()).decode()}}
        )[0]
        settings = resolve_settings(config, {"data-dir": str(self.dir)})
        self.assertEqual(load_identity(settings).peer_id(), key.peer_id())
        settings = resolve_settings(parse_config({})[0], {"data-dir": str(self.dir), "key-type": "ed25519"})
        self.assertEqual(load_identity(settings).key_type, KeyType.Ed25519)
