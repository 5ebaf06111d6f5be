"""Errors of model calls (1006) and IPFS uploads (1007)."""

from __future__ import annotations

import math

from aicn.errors import AICNError, ErrorCode


class ModelError(AICNError):
    """The model (or the IPFS node chosen for its output) failed: code 1006.

    ``model_code`` keeps a non-zero ``code`` the model itself returned.
    """

    def __init__(self, message: str, *, code: int = ErrorCode.MODEL, model_code: int | None = None) -> None:
        super().__init__(code, message)
        self.model_code = model_code


def code_number(value: int | float) -> int | None:
    """A model's numeric ``code`` as an int for :attr:`ModelError.model_code`; None for a float
    that has none: JSON ``Infinity`` and ``NaN``, which Python's decoder reads (``int()`` raises)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


class UploadError(AICNError):
    """Uploading to IPFS failed: code 1007."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UPLOAD, message)
