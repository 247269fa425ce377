#!/bin/sh
# Installs the Debian packages the tests need when they are missing.
# PostgreSQL and Redis: the tests start throwaway servers of both; Chromium
# runs the browser test of the tracking snippet.
set -e
have_pg() {
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
missing=""
have_pg || missing="$missing postgresql"
# Redis: the stream source's tests start a throwaway redis-server.
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
# Chromium: the tracking snippet is tested in a real browser.
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages:$missing (install them, e.g. sudo apt-get install$missing)" >&2
    exit 0
fi
echo "installing Debian packages:$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
