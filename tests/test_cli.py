"""The aicn console command."""

import base64
import io
import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from aicn import __version__
from aicn.cli import main
from aicn.config import load_config, resolve_settings
from aicn.identity import load_identity, read_key_file
from aicn.p2p.keys import KeyType

GO_KEY_FILE = bytes.fromhex("08021220") + (1).to_bytes(32, "big")


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class InitTests(SynchronousTestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())

    def test_worker(self):
        code, out, err = run("init", "--dir", str(self.dir))
        self.assertEqual((code, err), (0, ""))
        key = read_key_file(self.dir / "peer.key")
        self.assertIn(f"Peer ID: {key.peer_id()}", out)
        path = self.dir / "worker.json"
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        config, warnings = load_config(path)
        self.assertEqual(warnings, [])
        s = resolve_settings(config, {}, config_path=path)
        self.assertEqual(s.dht_mode, "client")
        self.assertFalse(s.relay_service or s.collector)
        self.assertEqual((s.api_host, s.api_port), ("127.0.0.1", 7002))
        self.assertEqual(s.listen, ("/ip4/0.0.0.0/tcp/7001", "/ip6/::/tcp/7001"))
        self.assertEqual(s.data_dir, self.dir.absolute())
        self.assertEqual(load_identity(s).peer_id(), key.peer_id())

    def test_input(self):
        code, out, _ = run("init", "--mode", "input", "--dir", str(self.dir), "--key-type", "ed25519")
        self.assertEqual(code, 0)
        s = resolve_settings(load_config(self.dir / "input.json")[0], {})
        self.assertEqual(s.dht_mode, "server")
        self.assertTrue(s.relay_service and s.collector)
        self.assertEqual((s.api_port, s.listen[0]), (6000, "/ip4/0.0.0.0/tcp/6001"))
        self.assertEqual(read_key_file(self.dir / "peer.key").key_type, KeyType.Ed25519)

    def test_refuses_to_overwrite(self):
        self.dir.mkdir()
        (self.dir / "peer.key").write_bytes(GO_KEY_FILE)
        code, out, err = run("init", "--dir", str(self.dir))
        self.assertEqual(code, 1)
        self.assertIn("refusing to overwrite", err)
        self.assertEqual((self.dir / "peer.key").read_bytes(), GO_KEY_FILE)
        self.assertFalse((self.dir / "worker.json").exists())

    def test_refuses_while_the_directory_is_locked(self):
        from aicn.datadir import DataDirLock

        self.dir.mkdir()
        with DataDirLock(self.dir) as lock:  # as a running node holds it
            code, out, err = run("init", "--dir", str(self.dir))
            self.assertEqual(code, 1)
            self.assertIn(f"pid {os.getpid()}", err)
            self.assertIn(str(lock.path), err)
            self.assertFalse((self.dir / "peer.key").exists())
        code, _, _ = run("init", "--dir", str(self.dir))
        self.assertEqual(code, 0)
        self.assertTrue((self.dir / "peer.key").exists())

    def test_bad_mode(self):
        code, _, _ = run("init", "--mode", "client", "--dir", str(self.dir))
        self.assertEqual(code, 2)


class OtherCommandTests(SynchronousTestCase):
    def test_peerkey_existing(self):
        path = Path(self.mktemp())
        path.write_bytes(GO_KEY_FILE)
        code, out, _ = run("peerkey", str(path))
        self.assertEqual(code, 0)
        key = read_key_file(path)
        self.assertIn(f"Peer ID: {key.peer_id()}", out)
        self.assertIn(f"Public key: {base64.b64encode(key.public_key.marshal()).decode()}", out)
        self.assertNotIn("Created", out)

    def test_peerkey_creates(self):
        path = Path(self.mktemp())
        code, out, _ = run("peerkey", str(path))
        self.assertEqual(code, 0)
        self.assertIn("Created", out)
        self.assertIn(str(read_key_file(path).peer_id()), out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_peerkey_corrupt(self):
        path = Path(self.mktemp())
        path.write_bytes(b"junk")
        code, _, err = run("peerkey", str(path))
        self.assertEqual(code, 1)
        self.assertIn("corrupt", err)
        self.assertEqual(path.read_bytes(), b"junk")

    def test_psk(self):
        code, out, _ = run("psk")
        code2, out2, _ = run("psk")
        self.assertEqual(code, 0)
        self.assertEqual(len(bytes.fromhex(out.strip())), 32)
        self.assertNotEqual(out, out2)

    def test_version(self):
        code, out, _ = run("version")
        self.assertEqual(code, 0)
        self.assertIn(__version__, out)

    def test_no_command(self):
        self.assertEqual(run()[0], 2)
