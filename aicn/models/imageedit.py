"""Image edit model calls (Go v0.2.3's model type 2): the multipart form a model is sent.

Go v0.2.3 forwards the client's ``multipart/form-data`` to the model as it
came (``model.ImageEditModel``) and relays the model's raw answer; the form
is written here from its parts: ``fields`` ``[(name, value)]`` and ``files``
``[(name, filename, content_type, bytes)]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["IMAGE_EDIT_MODEL", "encode_multipart"]

#: The registration type of image edit models.
IMAGE_EDIT_MODEL = 2


def _quote(value: str) -> bytes:
    # RFC 7578 §4.2: quote the name; CR, LF and '"' are percent-encoded, as browsers and Go do.
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22").encode("utf-8")


def encode_multipart(fields: Iterable[tuple[str, str]],
                     files: Iterable[tuple[str, str, str, bytes]], *,
                     boundary: str | None = None) -> tuple[bytes, bytes]:
    """``(content_type, body)`` of a ``multipart/form-data`` form: files first, then fields (Go's order)."""
    boundary = boundary or os.urandom(16).hex()
    sep = b"--" + boundary.encode("ascii")
    out: list[bytes] = []
    for name, filename, content_type, data in files:
        if sep in data:
            raise ValueError("a file contains the multipart boundary")
        ctype = (content_type or "application/octet-stream").encode("latin-1", "replace")
        out += [sep, b'\r\nContent-Disposition: form-data; name="', _quote(name), b'"; filename="',
                _quote(filename), b'"\r\nContent-Type: ', ctype, b"\r\n\r\n", data, b"\r\n"]
    for name, value in fields:
        encoded = value.encode("utf-8")
        if sep in encoded:
            raise ValueError("a field contains the multipart boundary")
        out += [sep, b"\r\n", b'Content-Disposition: form-data; name="' + _quote(name) + b'"', b"\r\n\r\n",
                encoded, b"\r\n"]
    out += [sep, b"--\r\n"]
    return b"multipart/form-data; boundary=" + boundary.encode("ascii"), b"".join(out)
