#!/bin/sh
# Install the js-ipfs daemon used by the IPFS integration tests
# (tests/support/ipfsd.py) from the committed package-lock.json.
# Idempotent: does nothing when node_modules matches the lock file already.
# Set AICN_JS_OPTIONAL=1 to only warn (exit 0) when node/npm are missing;
# the IPFS tests then skip themselves.
set -eu
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "ipfs/install.sh: node/npm not found; IPFS tests will be skipped" >&2
    [ "${AICN_JS_OPTIONAL:-0}" = 1 ] && exit 0
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "ipfs/install.sh: node $(node --version) is too old, need >= 20" >&2
    exit 1
fi

stamp=node_modules/.aicn-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f node_modules/ipfs/src/cli.js ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "ipfs/install.sh: node_modules up to date"
    exit 0
fi

echo "ipfs/install.sh: npm ci in $(pwd) (a few minutes)"
start=$(date +%s)
# No install scripts: none is needed, and some would try to download.
npm ci --no-audit --no-fund --ignore-scripts
echo "$want" > "$stamp"
echo "ipfs/install.sh: done in $(( $(date +%s) - start )) s"
