#!/usr/bin/env python
"""Regenerate ``aicn/node/protocol_pb2.py`` (and its ``.pyi`` stub) from ``proto/protocol.proto``.

Usage (from anywhere)::

    python proto/generate.py            # rewrite the committed files
    python proto/generate.py --out DIR  # write into DIR instead (used by the tests)

Needs ``grpcio-tools`` (the ``test`` extra), whose bundled ``protoc`` is what the
committed files were generated with.  The output is deterministic, so the test
suite regenerates into a temporary directory and compares byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PROTO_FILE = "protocol.proto"
DEFAULT_OUT = REPO_ROOT / "aicn" / "node"
#: The files protoc writes for PROTO_FILE.
OUTPUTS = ("protocol_pb2.py", "protocol_pb2.pyi")


def generate(out_dir: Path | str = DEFAULT_OUT) -> list[Path]:
    """Run grpc_tools' protoc on ``protocol.proto``; return the written paths.

    Raises ``ImportError`` when grpcio-tools is missing and ``RuntimeError``
    when protoc fails.
    """
    from grpc_tools import protoc  # imported lazily so the module loads without it

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # -I is the proto directory itself, so the file registers as "protocol.proto",
    # the same descriptor name the Go node uses.
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(PROTO_DIR / PROTO_FILE),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc}")
    return [out_dir / name for name in OUTPUTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
