#!/bin/sh
# Install what tests/integration/test_nat_netns.py needs: iproute2 (`ip`) and
# a NAT tool (`iptables`, or `nft`).  Idempotent and quiet; never fails: when
# something cannot be installed (not root, no apt-get, no network) it warns
# and exits 0, and the NAT test skips itself.
set -u

have_nat() { command -v iptables >/dev/null 2>&1 || command -v nft >/dev/null 2>&1; }

if command -v ip >/dev/null 2>&1 && have_nat; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_netns.sh: not root; the network-namespace NAT test will be skipped" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_netns.sh: no apt-get; install iproute2 and iptables to run the NAT test" >&2
    exit 0
fi
pkgs=""
command -v ip >/dev/null 2>&1 || pkgs="$pkgs iproute2"
have_nat || pkgs="$pkgs iptables"
echo "install_netns.sh: installing$pkgs"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs; } \
        >/tmp/install_netns.log 2>&1; then
    echo "install_netns.sh: could not install$pkgs (see /tmp/install_netns.log); the NAT test will be skipped" >&2
fi
exit 0
