#!/bin/sh
# Install what the dashboard's browser test (tests/api/test_observe.py) needs:
# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
# Idempotent and quiet; never fails: when they cannot be installed (not root,
# no apt-get, no network) it warns and exits 0, and the browser test skips itself.
set -u

have() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_chromium.sh: not root; the dashboard browser test will be skipped" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get; install chromium and chromium-driver to run the browser test" >&2
    exit 0
fi
echo "install_chromium.sh: installing chromium chromium-driver"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
        >/tmp/install_chromium.log 2>&1; then
    echo "install_chromium.sh: could not install chromium (see /tmp/install_chromium.log);" \
         "the browser test will be skipped" >&2
fi
exit 0
