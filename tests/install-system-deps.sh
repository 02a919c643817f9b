#!/bin/sh
# System programs the tests drive: Debian's Chromium for the demo-page tests.
set -e
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "install-system-deps: /usr/bin/chromium is missing; install Debian's chromium package" >&2
    exit 1
fi
