#!/usr/bin/env python
"""Regenerate the committed protobuf modules from the ``.proto`` sources.

* ``proto/protocol.proto`` (the AICN application schema, Go v0.1.2) → ``aicn/wire/protocol_pb2.py``;
* ``proto/protocol_v023.proto`` (the same schema at Go v0.2.3, package ``protocol_v023``)
  → ``aicn/wire/protocol_v023_pb2.py``;
* ``proto/p2p/*.proto`` (libp2p identify, envelope, peer record, pubsub RPC, kad,
  circuit relay v2 and its voucher, AutoNAT v1)
  → ``aicn/p2p/pb/*_pb2.py``.

Usage (from anywhere)::

    python proto/generate.py            # rewrite the committed files
    python proto/generate.py --out DIR  # write into DIR/<group>/ instead (used by the tests)

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

#: (group name, include dir, .proto files, committed output dir).  Each include
#: dir is the files' own folder, so descriptors register under their bare names
#: ("protocol.proto", as the Go node; "identify.proto", ...).
GROUPS = (
    ("wire", PROTO_DIR, ("protocol.proto", "protocol_v023.proto"), REPO_ROOT / "aicn" / "wire"),
    ("p2p", PROTO_DIR / "p2p",
     ("identify.proto", "envelope.proto", "peer_record.proto", "rpc.proto", "kad.proto",
      "circuit.proto", "voucher.proto", "autonat.proto"),
     REPO_ROOT / "aicn" / "p2p" / "pb"),
)


def _outputs(files) -> list[str]:
    return [f"{Path(f).stem}_pb2{ext}" for f in files for ext in (".py", ".pyi")]


def generate(out_dir: Path | str | None = None) -> list[tuple[Path, Path]]:
    """Run protoc on every group; return ``(written, committed)`` path pairs.

    With ``out_dir`` the files go to ``out_dir/<group>/``, else over the
    committed ones.  Raises ``ImportError`` when grpcio-tools is missing and
    ``RuntimeError`` when protoc fails.
    """
    from grpc_tools import protoc  # imported lazily so the module loads without it

    pairs = []
    for name, include, files, committed_dir in GROUPS:
        target = Path(out_dir) / name if out_dir is not None else committed_dir
        target.mkdir(parents=True, exist_ok=True)
        args = ["grpc_tools.protoc", f"-I{include}", f"--python_out={target}", f"--pyi_out={target}"]
        args += [str(include / f) for f in files]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc} for {name}")
        pairs += [(target / out, committed_dir / out) for out in _outputs(files)]
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output directory (default: the committed locations)")
    args = parser.parse_args(argv)
    for written, _ in generate(args.out):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
