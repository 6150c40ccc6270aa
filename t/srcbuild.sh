#!/bin/sh
# Builds nginx from a plain source tree (NGINX_SRC, an nginx checkout or
# release tarball) twice, with the module as a dynamic module and built in,
# and runs the test suite against each build.
#
#   make test-src NGINX_SRC=/path/to/nginx-1.29.8
set -eu

: "${NGINX_SRC:?set NGINX_SRC to an nginx source tree}"
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/src
configure=./configure
[ -x "$NGINX_SRC/configure" ] || configure=./auto/configure

mkdir -p "$out"
cd "$NGINX_SRC"

$configure --with-compat --with-debug --with-http_ssl_module \
    --add-dynamic-module="$top" --builddir="$out/dynamic" \
    > "$out/dynamic.log" 2>&1
make -j2 -f "$out/dynamic/Makefile" >> "$out/dynamic.log" 2>&1

$configure --with-debug --with-http_ssl_module \
    --add-module="$top" --builddir="$out/static" \
    > "$out/static.log" 2>&1
make -j2 -f "$out/static/Makefile" >> "$out/static.log" 2>&1

cd "$top"

echo "== dynamic module: $("$out/dynamic/nginx" -v 2>&1)"
TEST_NGINX_BINARY=$out/dynamic/nginx \
    DATO_MODULE=$out/dynamic/ngx_http_dato_module.so prove -r t/

echo "== built in: $("$out/static/nginx" -v 2>&1)"
TEST_NGINX_BINARY=$out/static/nginx DATO_MODULE=static prove -r t/
