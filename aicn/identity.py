"""The node's identity key and data directory.

``peer.key`` in the data directory holds the raw marshalled libp2p private key,
exactly as the Go node writes it (``crypto.MarshalPrivateKey``: for secp256k1
``08 02 12 20 || 32-byte scalar``), mode 0600.  A key given in the config
(``Identity.PrivKey``, base64 of the same bytes) takes precedence over the
file.  A corrupt key file is an error and is never overwritten: losing a
node's key would change its peer ID.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from aicn.files import atomic_write
from aicn.log import Logger

from aicn.config.schema import ConfigError
from aicn.p2p.keys import InvalidKey, KeyType, PrivateKey, parse_key_type
from aicn.p2p.peerid import InvalidPeerID, PeerID

if TYPE_CHECKING:  # settings sits beside identity; only the type is needed
    from aicn.config.settings import NodeSettings

__all__ = [
    "KEY_FILE",
    "IdentityError",
    "ensure_data_dir",
    "read_key_file",
    "write_key_file",
    "load_or_create_key_file",
    "load_node_key",
    "load_identity",
]

KEY_FILE = "peer.key"
_log = Logger()


class IdentityError(ConfigError):
    """The node key cannot be loaded, created, or does not match the config."""


def ensure_data_dir(path: str | os.PathLike) -> Path:
    """Create the data directory (mode 0700) if missing; return it."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise IdentityError(f"data directory {str(path)!r} exists and is not a directory") from None
    except OSError as exc:
        raise IdentityError(f"cannot create data directory {str(path)!r}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise IdentityError(f"data directory {str(path)!r} is not a directory")
    return path


def read_key_file(path: str | os.PathLike) -> PrivateKey:
    """Load a ``peer.key`` file; raises :class:`IdentityError` if unreadable or corrupt."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        key = PrivateKey.unmarshal(raw)
    except (InvalidKey, ValueError) as exc:
        raise IdentityError(
            f"key file {str(path)!r} is corrupt ({exc}); refusing to replace it, "
            "move it away to create a new identity"
        ) from None
    if key.key_type not in (KeyType.Secp256k1, KeyType.Ed25519):
        raise IdentityError(f"key file {str(path)!r} holds an unsupported {key.key_type.name} key")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0
    if mode & 0o077:
        _log.warn("key file {path} is readable by others (mode {mode:o}); chmod 600 it", path=str(path), mode=mode)
    return key


def write_key_file(path: str | os.PathLike, key: PrivateKey) -> None:
    """Write ``key`` in Go's ``peer.key`` format, mode 0600; never overwrites."""
    path = Path(path)
    try:
        atomic_write(path, key.marshal(), mode=0o600, overwrite=False)
    except FileExistsError:
        raise IdentityError(f"key file {str(path)!r} already exists") from None
    except OSError as exc:
        raise IdentityError(f"cannot write key file {str(path)!r}: {exc.strerror or exc}") from None


def load_or_create_key_file(
    path: str | os.PathLike, key_type: KeyType | str = KeyType.Secp256k1
) -> tuple[PrivateKey, bool]:
    """Load ``path``, or create it with a new ``key_type`` key if missing.

    Returns ``(key, created)``.  A file that exists but is corrupt raises
    :class:`IdentityError` and is left alone.
    """
    path = Path(path)
    if not os.path.lexists(path):
        try:
            key_type = parse_key_type(key_type)
            key = PrivateKey.generate(key_type)
        except InvalidKey as exc:
            raise IdentityError(str(exc)) from None
        try:
            write_key_file(path, key)
        except IdentityError:
            if not os.path.lexists(path):
                raise
            # Another process created it in between: use theirs.
        else:
            _log.info("created new {type} identity {peer_id} in {path}",
                      type=key_type.name, peer_id=str(key.peer_id()), path=str(path))
            return key, True
    return read_key_file(path), False


def load_node_key(
    data_dir: str | os.PathLike,
    *,
    key_type: KeyType | str = KeyType.Secp256k1,
    config_priv_key: bytes | str | None = None,
    config_peer_id: str | None = None,
) -> PrivateKey:
    """The node's key.

    ``config_priv_key`` (marshalled bytes, or their base64 as in
    ``Identity.PrivKey``) wins over ``<data_dir>/peer.key``; otherwise the
    file is loaded or created with ``key_type`` (the data directory is created
    too).  If ``config_peer_id`` is given and does not match the key,
    :class:`IdentityError` names both IDs.
    """
    if config_priv_key:
        try:
            raw = (
                base64.b64decode(config_priv_key, validate=True)
                if isinstance(config_priv_key, str)
                else bytes(config_priv_key)
            )
            key = PrivateKey.unmarshal(raw)
        except (InvalidKey, ValueError) as exc:
            raise IdentityError(f"Identity.PrivKey: not a libp2p private key: {exc}") from None
        source = "Identity.PrivKey"
    else:
        directory = ensure_data_dir(data_dir)
        key, _ = load_or_create_key_file(directory / KEY_FILE, key_type)
        source = str(directory / KEY_FILE)
    if config_peer_id:
        try:
            expected = PeerID.from_string(config_peer_id)
        except InvalidPeerID as exc:
            raise IdentityError(f"Identity.PeerID: invalid peer ID {config_peer_id!r}: {exc}") from None
        actual = key.peer_id()
        if actual != expected:
            raise IdentityError(
                f"Identity.PeerID {expected} does not match the key from {source}, whose peer ID is {actual}"
            )
    return key


def load_identity(settings: "NodeSettings") -> PrivateKey:
    """:func:`load_node_key` for resolved :class:`~aicn.config.NodeSettings`."""
    return load_node_key(
        settings.data_dir,
        key_type=settings.key_type,
        config_priv_key=settings.identity_priv_key,
        config_peer_id=settings.identity_peer_id,
    )
