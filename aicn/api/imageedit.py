"""Reading an ``/api/v0/image/edit`` request (Go v0.2.3): multipart or base64 JSON.

Go v0.2.3 takes the routing fields in the query (``node_id``, ``project``,
``model``, ``cid``, ``wallet``, ``signature``, ``hash``) and the model's
input as ``multipart/form-data`` (``image``, ``prompt``, ``mask``,
``model``, ``n``, ``size``, ``response_format``), which it forwards to the
model as it came.  aicn also takes the same request as a JSON object whose
``image`` (a string or a list) and ``mask`` are base64, bare or as
``data:`` URLs; the routing fields may then be in the body too.

Either way the result is one plain dict: the routing fields, and the form
to send to the model, ``fields`` ``[(name, value)]`` and ``files``
``[(name, filename, content_type, bytes)]``.  Anything wrong is a 1001 that
names it; a multipart body that cannot be parsed is a
:class:`~aicn.api.errors.FormError` (HTTP 422 in the v0.2.3 shape, as Go).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from typing import Any, Mapping

from werkzeug.exceptions import HTTPException
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

from aicn.api.errors import FormError, HTTPError
from aicn.config import MAX_REQUEST_TIMEOUT, gojson
from aicn.errors import AICNError, ErrorCode, parameter_error

__all__ = ["ROUTING_FIELDS", "IMAGE_FIELDS", "parse_image_edit", "sniff_image_type"]

#: Fields that choose the node and model; the rest is the model's input.
ROUTING_FIELDS = ("node_id", "project", "model", "cid", "wallet", "signature", "hash")
#: Field names an image may come under (OpenAI's SDKs send ``image[]`` for several).
IMAGE_FIELDS = ("image", "image[]")
RESPONSE_FORMATS = ("", "url", "b64_json")
#: Most parts a multipart body may have.
MAX_FORM_PARTS = 64
_DATA_URL = re.compile(r"^data:([\w.+/-]*)(;[^,]*)?,", re.ASCII)


def sniff_image_type(data: bytes) -> str:
    """The content type of a PNG, JPEG, WebP or GIF image; ``application/octet-stream`` otherwise."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "application/octet-stream"


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def parse_image_edit(content_type: bytes | None, raw: bytes, query: Mapping[str, str], *,
                     need_node: bool) -> dict:
    """Validate an image edit request into ``{node_id, project, model, cid, wallet, signature, hash,
    timeout, prompt, fields, files}``."""
    mimetype, options = parse_options_header((content_type or b"").decode("latin-1"))
    if mimetype == "multipart/form-data":
        values, files = _multipart(raw, options)
    elif mimetype == "application/json":
        values, files = _json(raw)
    else:
        raise HTTPError(ErrorCode.PARAMETER, "image/edit takes multipart/form-data or application/json, "
                        f"not {mimetype or 'no Content-Type'}", status=415)

    def routing(name: str) -> str:
        value = query.get(name)
        if not value:
            value = values.get(name, "")
        return value

    params: dict[str, Any] = {name: routing(name) for name in ROUTING_FIELDS}
    if not need_node:
        params["node_id"] = ""
    elif not params["node_id"]:
        raise parameter_error("empty node_id")
    for name in ("project", "model"):
        if not params[name]:
            raise parameter_error(f"empty {name}")
    params["timeout"] = _timeout(query.get("timeout") or values.pop("timeout", None))

    fields = [(name, value) for name, value in values.items_all() if name not in ROUTING_FIELDS
              or name == "model"]
    if not any(name == "model" for name, _ in fields):
        fields.insert(0, ("model", params["model"]))
    prompt = values.get("prompt", "")
    if not prompt:
        raise parameter_error("empty prompt")
    n = values.get("n", "")
    if n:
        try:
            number = int(n)
        except ValueError:
            number = 0
        if number < 1:
            raise parameter_error("n must be an integer of at least 1")
    if values.get("response_format", "") not in RESPONSE_FORMATS:
        raise parameter_error("response_format must be url or b64_json")
    if not any(name in IMAGE_FIELDS for name, *_ in files):
        raise parameter_error("empty image")
    for name, _filename, _type, data in files:
        if not data:
            raise parameter_error(f"empty {name}")
    params.update(prompt=prompt, fields=fields, files=files)
    return params


class _Values:
    """Form values in order, repeats kept; lookups give the first."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def get(self, name: str, default: str = "") -> str:
        for key, value in self._items:
            if key == name:
                return value
        return default

    def pop(self, name: str, default=None):
        value = default
        for key, item in self._items:
            if key == name:
                value = item
                break
        self._items = [(k, v) for k, v in self._items if k != name]
        return value

    def items_all(self) -> list[tuple[str, str]]:
        return list(self._items)


def _multipart(raw: bytes, options: dict) -> tuple[_Values, list]:
    if not options.get("boundary"):
        raise FormError("multipart/form-data without a boundary")
    parser = FormDataParser(silent=False, max_form_parts=MAX_FORM_PARTS)
    try:
        _, form, files = parser.parse(io.BytesIO(raw), "multipart/form-data", len(raw), options)
    except (ValueError, HTTPException) as exc:
        reason = getattr(exc, "description", None) or exc
        raise FormError(f"cannot read the multipart form: {reason}") from None
    # A part without a name is skipped, as Go's multipart.Reader.ReadForm skips it.
    values = _Values()
    for name, value in form.items(multi=True):
        if name:
            values.add(name, value)
    out = []
    for name, storage in files.items(multi=True):
        if not name:
            continue
        data = storage.read()
        content_type = storage.mimetype or sniff_image_type(data)
        out.append((name, storage.filename or name, content_type, data))
    return values, out


def _json(raw: bytes) -> tuple[_Values, list]:
    try:
        obj = gojson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AICNError(ErrorCode.PARSING, f"Parsing error: {exc}") from None
    if not isinstance(obj, dict):
        raise AICNError(ErrorCode.PARSING, "Parsing error: body must be a JSON object")
    values = _Values()
    files = []
    for key, value in obj.items():
        if value is None:
            continue
        name = _field_name(key)
        if name in ("image", "mask"):
            items = value if name == "image" and isinstance(value, list) else [value]
            for i, item in enumerate(items):
                files.append(_decode_image(name, item, i))
        elif isinstance(value, bool):
            values.add(name, "true" if value else "false")
        elif isinstance(value, (str, int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise parameter_error(f"{key} must be a finite number")
            values.add(name, value if isinstance(value, str) else _number(value))
        else:
            raise parameter_error(f"{key} must be a string or a number")
    return values, files


def _field_name(key: str) -> str:
    """A JSON key as a form field: the routing and image keys by Go's case-folding rule, others as sent."""
    for name in ROUTING_FIELDS + ("image", "mask", "timeout"):
        if gojson.lookup({key: True}, name)[1] is True:
            return name
    return key


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)  # (float() of a 400-digit int raises OverflowError)
    return str(int(value)) if value.is_integer() else repr(value)


def _decode_image(name: str, item: Any, index: int) -> tuple[str, str, str, bytes]:
    if not isinstance(item, str) or not item:
        raise parameter_error(f"{name} must be a base64 string")
    declared = ""
    match = _DATA_URL.match(item)
    if match:
        declared = match.group(1)
        if ";base64" not in (match.group(2) or ""):
            raise parameter_error(f"{name} must be a base64 data URL")
        item = item[match.end():]
    try:
        data = base64.b64decode("".join(item.split()), validate=True)
    except (binascii.Error, ValueError):
        raise parameter_error(f"{name} is not valid base64") from None
    content_type = declared or sniff_image_type(data)
    filename = f"{name}{index or ''}.{_EXTENSIONS.get(content_type, 'bin')}"
    return ("image" if name == "image" else name), filename, content_type, data


def _timeout(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_REQUEST_TIMEOUT:
        raise parameter_error("timeout must be a number of seconds above 0 and at most "
                              f"{MAX_REQUEST_TIMEOUT:g}")
    return seconds
