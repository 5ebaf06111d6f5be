"""The web dashboard's files: static HTML, CSS and JavaScript shipped in ``aicn/api/static``.

No build step and nothing from elsewhere: the page loads its stylesheet and
script from this node and polls ``/api/v0/debug/state``.  Only the files
named in :data:`FILES` are served (no paths from the request reach the file
system), each with a strict Content-Security-Policy.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["CSP", "FILES", "read"]

#: name -> Content-Type of every file served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Everything from this node only; no inline code, no frames, no forms.
CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@functools.cache
def read(name: str) -> bytes:
    """The content of the static file ``name`` (one of :data:`FILES`)."""
    if name not in FILES:
        raise KeyError(name)
    return resources.files("aicn.api").joinpath("static", name).read_bytes()
