#!/usr/bin/env bash
# Builds the Debian binary package libnginx-mod-http-dato (debian/) from
# this working tree, for "make deb".
#
#   t/deb/build.sh            -> build/deb/libnginx-mod-http-dato_<ver>_<arch>.deb
#
# The tree is copied to build/deb/src first (tracked and untracked files,
# without what .gitignore excludes: build/, t/servroot/, ...), so the build
# leaves nothing in the working tree; dpkg-buildpackage writes the .deb,
# .buildinfo and .changes next to the copy, into build/deb/.
#
# Build dependencies (debian/control's Build-Depends) are installed with
# apt-get only when dpkg-checkbuilddeps reports some missing, and
# "apt-get update" runs only then; that needs root.  The build itself does
# not (Rules-Requires-Root: no).  Works on Debian bookworm.
#
# Environment: DEB_OUT (output directory, default build/deb).
# The last line of standard output is the path of the .deb.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${DEB_OUT:-$REPO/build/deb}
SRC=$OUT/src
PKG=libnginx-mod-http-dato
export DEBIAN_FRONTEND=noninteractive

apt_updated=
apt_update_once() {
    if [ -z "$apt_updated" ]; then
        apt-get update -q
        apt_updated=1
    fi
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: missing build dependencies ($*); run as root to" \
             "install them" >&2
        exit 1
    fi
}

# dpkg-dev brings dpkg-checkbuilddeps and dpkg-buildpackage
if ! dpkg-query -W -f='${Status}\n' dpkg-dev 2>/dev/null \
        | grep -q 'install ok installed'; then
    need_root dpkg-dev
    apt_update_once
    apt-get install -y -q --no-install-recommends dpkg-dev
fi

# scratch copy of the working tree
rm -rf "$OUT"
mkdir -p "$SRC"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked files (as they are now, edits included) and untracked ones,
    # without ignored ones and without leftovers of an in-tree build
    (
        cd "$REPO"
        git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            case "$f" in
                build/*|obj-*|debian/$PKG/*|debian/.debhelper/*) continue ;;
            esac
            # files deleted in the working tree are still in the index
            if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
        done \
        | tar --null --no-recursion -T - -cf -
    ) | tar -xf - -C "$SRC"
else
    tar -C "$REPO" --exclude=./build --exclude=./.git --exclude='./obj-*' \
        --exclude=./t/servroot --exclude="./debian/$PKG" \
        --exclude=./debian/.debhelper -cf - . | tar -xf - -C "$SRC"
fi

cd "$SRC"

if ! dpkg-checkbuilddeps >/dev/null 2>&1; then
    missing=$(dpkg-checkbuilddeps 2>&1 || true)
    need_root "$missing"
    echo "installing build dependencies: $missing"
    apt_update_once
    apt-get build-dep -y -q --no-install-recommends "$SRC"
fi

start=$(date +%s)
dpkg-buildpackage -us -uc -b -Jauto
echo "build.sh: dpkg-buildpackage took $(( $(date +%s) - start )) s"

deb=$(ls -t "$OUT"/${PKG}_*.deb 2>/dev/null | head -n 1)
if [ -z "$deb" ]; then
    echo "build.sh: no ${PKG}_*.deb in $OUT" >&2
    exit 1
fi
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\):/  \1:/p'
dpkg-deb --contents "$deb" | awk '{ print "  " $6, $7, $8 }'
echo "$deb"
