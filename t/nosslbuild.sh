#!/usr/bin/env bash
# Builds build/nossl/nginx for make test-nossl: the upstream source that
# t/pollbuild.sh fetched, without OpenSSL (no http_ssl_module), with the
# module built in.  Its test (t/23-nossl.t) asks nginx -t what a signing
# secret gets there.
#
#   bash t/nosslbuild.sh
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/nossl
tree=$(echo "$top"/build/poll/src/nginx-*/)

[ -x "$tree/configure" ] || { echo "run t/pollbuild.sh first" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"

# rewrite and gzip would want PCRE and zlib; the test needs neither
cd "$tree"
{
    ./configure --without-http_rewrite_module --without-http_gzip_module \
        --add-module="$top" --builddir="$out/objs"
    make -j2 -f "$out/objs/Makefile" binary
} > "$out/build.log" 2>&1 || { tail -20 "$out/build.log"; exit 1; }

if grep -q 'NGX_OPENSSL' "$out/objs/ngx_auto_config.h"; then
    echo "nosslbuild: the build has OpenSSL after all" >&2
    exit 1
fi

cp "$out/objs/nginx" "$out/nginx"
"$out/nginx" -v
