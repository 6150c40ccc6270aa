#!/bin/bash
# "make bench": the benchmarks of issue 7 (see t/bench/bench.pl for what
# each measurement does).  Prints a markdown table of results on stdout,
# progress on stderr.  Everything runs on 127.0.0.1 and stops by itself.
#
#   t/bench/run.sh                 full run (about 8 minutes)
#   BENCH_QUICK=1 t/bench/run.sh   shorter runs (about 3 minutes)
#   BENCH_ONLY=7,8 t/bench/run.sh  some measurements only (1-10)
#
# Environment: DATO_MODULE (default build/ngx_http_dato_module.so),
# BENCH_TIMEOUT (hard limit of the whole run in seconds, default 780),
# and the BENCH_* variables described at the top of bench.pl.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

export DATO_MODULE=${DATO_MODULE:-$top/build/ngx_http_dato_module.so}

if [ ! -f "$DATO_MODULE" ]; then
    echo "bench: module $DATO_MODULE not found: run make first" >&2
    exit 2
fi

# the tools, installed only when missing (root); libnginx-mod-http-lua
# is the baseline of measurement 8 (t/bench/lua_batcher.lua), loaded by
# load_module lines of the bench's own configuration.
sh "$(dirname "$0")/../install.sh" wrk valgrind perl nginx libnginx-mod-http-lua || exit 2

# 1,000 flood connections and 10,000 waiting webhooks need file
# descriptors: as many as the hard limit allows (root may raise it)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# a hard bound on the whole run; bench.pl kills what it started on TERM
exec timeout -k 15 "${BENCH_TIMEOUT:-780}" perl "$here/bench.pl"
