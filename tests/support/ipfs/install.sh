#!/bin/sh
# Install the js-ipfs daemon used by the IPFS tests (tests/support/ipfsd.py)
# from package-lock.json (idempotent; see tests/support/npm_ci.sh).  No install
# scripts: none is needed, and some would try to download.
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../npm_ci.sh" "$here" node_modules/ipfs/src/cli.js "IPFS" --ignore-scripts
