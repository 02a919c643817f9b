#!/bin/sh
# System programs the tests drive: Debian's Chromium for the demo-page tests, and
# redis-server, which the Redis tests start themselves on a free loopback port.
set -e
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v redis-server >/dev/null || missing="$missing redis-server"
if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "install-system-deps: missing:$missing; install these Debian packages" >&2
    exit 1
fi
