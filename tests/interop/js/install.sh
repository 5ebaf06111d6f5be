#!/bin/sh
# Install the js-libp2p reference peer's node_modules from package-lock.json
# (idempotent; see tests/support/npm_ci.sh, also for AICN_JS_OPTIONAL=1).
here=$(cd "$(dirname "$0")" && pwd)
exec sh "$here/../../support/npm_ci.sh" "$here" node_modules/libp2p "js interop"
