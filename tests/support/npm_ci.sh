#!/bin/sh
# Shared by the npm-based test components: install DIR's node_modules from its
# committed package-lock.json with `npm ci`, unless MARKER exists and the
# node_modules were made from this very lock file.
#
#   npm_ci.sh DIR MARKER WHAT [extra npm ci arguments...]
#
# WHAT names the tests that need it (for messages).  Set AICN_JS_OPTIONAL=1 to
# only warn (exit 0) when node/npm are missing; those tests then skip.
set -eu
dir=$1; marker=$2; what=$3; shift 3
cd "$dir"
name="$(basename "$(pwd)")/install"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "$name: node/npm not found; $what tests will be skipped" >&2
    [ "${AICN_JS_OPTIONAL:-0}" = 1 ] && exit 0
    exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "$name: node $(node --version) is too old, need >= 20" >&2
    exit 1
fi

stamp=node_modules/.aicn-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -e "$marker" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$name: node_modules up to date"
    exit 0
fi

echo "$name: npm ci in $(pwd)"
start=$(date +%s)
npm ci --no-audit --no-fund "$@"
echo "$want" > "$stamp"
echo "$name: done in $(( $(date +%s) - start )) s"
