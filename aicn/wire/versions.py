"""The two wire schemas by name, and what a peer's version string says about them.

Go nodes stamp every message's ``header.client_version`` (and identify's
``agent_version``) with ``git describe --tags``: ``v0.2.3``, or
``v0.2.3-4-gdeadbee`` past a tag; unstamped builds leave it empty.  The
schema changed at v0.1.9 (models as messages, renumbered error codes) and
v0.2.0 (chat content as JSON bytes): a version from v0.1.9 on speaks
:data:`V023`, an older one :data:`V012`.  (v0.1.6 to v0.1.8 already had
v0.2.3's image messages and v0.1.9 still v0.1.2's chat content; no node of
those releases is expected, and decoding falls back to the other schema
when a body does not fit, see :mod:`aicn.node.schemas`.)

aicn writes ``"<schema> (aicn-py/<version>)"``, e.g. ``v0.2.3 (aicn-py/0.1.0)``:
a Go node only logs the field, and another aicn node reads the schema from
its start.
"""

from __future__ import annotations

import re
from types import ModuleType

from aicn.wire import protocol_pb2, protocol_v023_pb2

__all__ = ["V012", "V023", "WIRE_VERSIONS", "AICN_AGENT", "module_of", "version_of", "schema_of_version",
           "header_version", "is_aicn"]

#: The spec's schema (proto/protocol.proto) and Go v0.2.3's (proto/protocol_v023.proto).
V012 = "v0.1.2"
V023 = "v0.2.3"
WIRE_VERSIONS = (V023, V012)

_MODULES = {V012: protocol_pb2, V023: protocol_v023_pb2}
_PACKAGES = {protocol_pb2.DESCRIPTOR.package: V012, protocol_v023_pb2.DESCRIPTOR.package: V023}
#: What identifies an aicn node in a version string (``aicn.AGENT_VERSION`` starts with it).
AICN_AGENT = "aicn-py/"
#: ``v<major>.<minor>.<patch>`` at the start: a tag, or ``git describe`` past one.
_VERSION = re.compile(r"v(\d{1,4})\.(\d{1,4})\.(\d{1,4})(?![\d.])")
#: The first release with v0.2.3's AI-project messages and error numbering.
_FIRST_V023 = (0, 1, 9)


def module_of(version: str) -> ModuleType:
    """The generated module of a schema (:data:`V012` or :data:`V023`)."""
    return _MODULES[version]


def version_of(message_or_module) -> str:
    """The schema a generated message (or module) belongs to."""
    descriptor = message_or_module.DESCRIPTOR
    package = descriptor.package if isinstance(message_or_module, ModuleType) else descriptor.file.package
    return _PACKAGES[package]


def schema_of_version(text: str | None) -> str | None:
    """The schema a peer's version string speaks, or None when it names no Go release
    (empty, ``aicn-py/0.1.0``, garbage)."""
    if not text:
        return None
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    release = tuple(int(g) for g in match.groups())
    return V023 if release >= _FIRST_V023 else V012


def header_version(schema: str, agent: str) -> str:
    """Our ``header.client_version`` for a message in ``schema``: ``v0.2.3 (aicn-py/0.1.0)``."""
    return f"{schema} ({agent})" if agent else schema


def is_aicn(text: str | None) -> bool:
    """Whether a version string (header or identify agent) is an aicn node's, which reads both schemas."""
    return bool(text) and AICN_AGENT in text
