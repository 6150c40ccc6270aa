#!/usr/bin/env bash
# Builds build/poll/nginx for make test-poll: the packaged nginx's version
# and configure flags, plus the poll and select event methods that
# Debian's build leaves out (it has epoll).  The source is the packaged
# version's upstream tarball (apt-get source); nginx-dev's headers go over
# the tarball's, so that the module built against them loads into this
# nginx as into the packaged one.  Debian's patches to .c files are not
# applied: this nginx is for the tests only.
#
#   bash t/pollbuild.sh [NGX_SRC]
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
ngx_src=${1:-/usr/share/nginx/src}
out=$top/build/poll
apt=$out/apt
log=$out/build.log

rm -rf "$out"
mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial" \
    "$out/src"

# the machine's package sources as deb-src ones, in apt state of our own:
# the system's apt configuration is left as it is
sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$apt/sources.list" \
    2>/dev/null || true
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed 's/^Types: deb$/Types: deb-src/' "$f" > "$apt/parts/$(basename "$f")"
done

aptopts=(-q -o "Dir::Etc::SourceList=$apt/sources.list"
         -o "Dir::Etc::SourceParts=$apt/parts"
         -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
         -o "APT::Sandbox::User=root")

# the installed version's tarball, or the newest one's when that version
# has left the archive: each has the same upstream source
version=$(dpkg-query -W -f '${Version}' nginx-dev)

{
    apt-get "${aptopts[@]}" update
    cd "$out/src"
    apt-get "${aptopts[@]}" source --download-only --tar-only \
        "nginx=$version" \
    || apt-get "${aptopts[@]}" source --download-only --tar-only nginx
} > "$log" 2>&1 || { tail -20 "$log"; exit 1; }

tar xzf "$out"/src/nginx_*.orig.tar.gz -C "$out/src"
tree=$(echo "$out"/src/nginx-*/)

# headers only: nginx-dev has no .c file
cp -r "$ngx_src/src/." "$tree/src/"

cd "$tree"
. "$ngx_src/conf_flags"

{
    ./configure --with-cc-opt="-g -O2 -fPIC -Wall" --with-ld-opt="-fPIC" \
        "${NGX_CONF_FLAGS[@]}" --with-poll_module --with-select_module \
        --builddir="$out/objs"
    make -j2 -f "$out/objs/Makefile" binary
} >> "$log" 2>&1 || { tail -20 "$log"; exit 1; }

cp "$out/objs/nginx" "$out/nginx"
"$out/nginx" -v
