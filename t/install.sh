#!/bin/sh
# Installs the Debian packages named that are not installed yet, and only
# then runs "apt-get update" (root).  The one place where the project's
# scripts and Makefile targets get what they need on a fresh machine.
#
#   sh t/install.sh nginx nginx-dev wrk ...
set -eu

missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null \
        | grep -q 'install ok installed' || missing="$missing $p"
done

[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ]; then
    echo "missing packages:$missing (run as root to install them)" >&2
    exit 2
fi

echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >&2
