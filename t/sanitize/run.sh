#!/usr/bin/env bash
# Builds the module with AddressSanitizer and UndefinedBehaviorSanitizer
# (gcc) and runs the test suite with it, loaded into the packaged nginx
# with the sanitizer runtimes preloaded.
#
#   t/sanitize/run.sh                 the whole suite (prove -r t/)
#   t/sanitize/run.sh t/02-payloads.t some tests only (arguments go to prove)
#
# Takes about as long as "prove -r t/" (the tests mostly wait on timers),
# plus some 15 s to configure and build the first time.
#
# The build is separate from "make"'s: build/asan/{nginx-src,objs} and
# build/asan/ngx_http_dato_module.so.  nginx is started through a wrapper,
# build/asan/nginx, that preloads libasan and libubsan and execs the
# packaged binary: the harness (t/lib/DatoTest.pm) takes it from
# TEST_NGINX_BINARY, so that the runtimes reach nginx and not perl.  A
# small preloaded library, t/sanitize/ubsan_options.c, keeps UBSAN_OPTIONS
# for the workers.
#
# Sanitizer reports go to build/asan/reports/{asan,ubsan}.PID (the directory
# is mode 1777: workers run as nobody).  The run fails when prove fails or
# when any report file was written; the reports are printed.
#
# Environment:
#   NGX_SRC       nginx sources of nginx-dev (default /usr/share/nginx/src)
#   NGINX_BIN     the packaged nginx (default /usr/sbin/nginx)
#   ASAN_OPTIONS, UBSAN_OPTIONS  appended to the defaults below (leave
#                 log_path alone: see below)
#   PROVE_ARGS    more prove flags (e.g. -v)
#
# Leak detection is off: nginx does not free its cycle at exit, and workers
# run as another user.  Memory that nginx allocates from its pools is
# checked only at the edges of each pool block (the packaged nginx is not
# instrumented); what the module, jansson and libcurl malloc() is checked
# exactly.

set -euo pipefail

script=$(readlink -f "$0")
top=$(cd "$(dirname "$script")/../.." && pwd)
cd "$top"

: "${NGX_SRC:=/usr/share/nginx/src}" "${NGINX_BIN:=/usr/sbin/nginx}"
: "${PROVE_ARGS:=}"

out=$top/build/asan
srccopy=$out/nginx-src
objs=$out/objs
module=$out/ngx_http_dato_module.so
wrapper=$out/nginx
reports=$out/reports

CC_OPT="-g -O1 -fPIC -fsanitize=address,undefined -fno-omit-frame-pointer"
LD_OPT="-fPIC -fsanitize=address,undefined"

PACKAGES="make gcc libc6-dev libasan8 libubsan1 nginx nginx-dev
          libcurl4-openssl-dev libjansson-dev perl curl"

install_missing() {
    sh "$(dirname "$0")/../install.sh" $PACKAGES
}

install_missing

###########################################################################
# build

# the configure tests run programs linked with the sanitizers: leak reports
# at their exit must not make a test fail (and a feature look missing)
export ASAN_OPTIONS_BUILD="detect_leaks=0"

if [ ! -f "$objs/Makefile" ] || [ config -nt "$objs/Makefile" ] \
    || [ "$script" -nt "$objs/Makefile" ]
then
    echo "sanitize: configuring nginx in $srccopy"
    rm -rf "$srccopy" "$objs"
    mkdir -p "$out"
    cp -r "$NGX_SRC" "$srccopy"

    (
        cd "$srccopy"
        # shellcheck disable=SC1091
        . ./conf_flags
        ASAN_OPTIONS=$ASAN_OPTIONS_BUILD ./configure \
            --with-cc-opt="$CC_OPT" --with-ld-opt="$LD_OPT" \
            "${NGX_CONF_FLAGS[@]}" \
            --add-dynamic-module="$top" --builddir="$objs"
    ) > "$out/configure.log" 2>&1 || {
        tail -30 "$out/configure.log" >&2
        echo "sanitize: configure failed (see $out/configure.log)" >&2
        exit 2
    }

    # the configure tests are compiled and run with the sanitizers: say
    # where their findings differ from the default build's (that one has
    # -Werror, which alone makes the pwrite() and strerrordesc_np() tests
    # fail; neither changes the module's ABI)
    if [ -f "$top/build/objs/ngx_auto_config.h" ]; then
        d=$(diff <(grep -o '^#define NGX_[A-Z0-9_]*' "$top/build/objs/ngx_auto_config.h" | sort) \
                 <(grep -o '^#define NGX_[A-Z0-9_]*' "$objs/ngx_auto_config.h" | sort) \
            | sed -n 's/^\([<>]\) #define /\1/p' | tr '\n' ' ') || true
        [ -z "$d" ] || echo "sanitize: note: configure found, compared with" \
            "build/objs (< only there, > only here): $d"
    fi
fi

echo "sanitize: building $module"
ASAN_OPTIONS=$ASAN_OPTIONS_BUILD \
    make -s -f "$objs/Makefile" -C "$srccopy" modules > "$out/build.log" 2>&1 || {
    cat "$out/build.log" >&2
    echo "sanitize: the module does not build" >&2
    exit 2
}
cp "$objs/ngx_http_dato_module.so" "$module"
grep -E 'warning:' "$out/build.log" >&2 || true

###########################################################################
# the wrapper and the runtime options

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
libasan=$(readlink -f "$libasan")
libubsan=$(readlink -f "$libubsan")

for l in "$libasan" "$libubsan"; do
    [ -f "$l" ] || { echo "sanitize: $l not found" >&2; exit 2; }
done

if ! readelf -d "$module" | grep -q 'libasan'; then
    echo "sanitize: $module is not linked with libasan" >&2
    exit 2
fi

# UBSan needs help to write its reports to files and to keep its options
# in the workers (see t/sanitize/ubsan_options.c)
shim=$out/ubsan_options.so
gcc -shared -fPIC -O2 -o "$shim" t/sanitize/ubsan_options.c -ldl

# libasan first (ASan insists), then the shim, so that its
# __ubsan_default_options() is the one libubsan finds
cat > "$wrapper" <<EOF
#!/bin/sh
# nginx with the sanitizer runtimes (written by t/sanitize/run.sh)
LD_PRELOAD="$libasan:$shim:$libubsan\${LD_PRELOAD:+:\$LD_PRELOAD}"
export LD_PRELOAD
exec "$NGINX_BIN" "\$@"
EOF
chmod 755 "$wrapper"

rm -rf "$reports"
mkdir -p "$reports"
# workers run as nobody: they must reach and write the report directory
chmod 755 "$top/build" "$out"
chmod 1777 "$reports"

# halt_on_error=1 (ASan's default): a worker with a memory error exits, the
# harness sees "exited with code 1" and fails the test.  UBSan reports and
# goes on, so that one run shows them all.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$reports/asan:detect_stack_use_after_return=1:${ASAN_OPTIONS:-}"
# UBSan's log_path must be ASan's, and UBSAN_LOG_PATH says where UBSan's
# reports go (see t/sanitize/ubsan_options.c)
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:log_path=$reports/asan:${UBSAN_OPTIONS:-}"
export UBSAN_LOG_PATH=$reports/ubsan

# the wrapper starts the sanitized nginx; nothing here preloads into perl
"$wrapper" -V > "$out/nginx-V.txt" 2>&1 || {
    cat "$out/nginx-V.txt" >&2
    echo "sanitize: $wrapper does not run" >&2
    exit 2
}
rm -f "$reports"/*

###########################################################################
# the test suite

if [ $# -eq 0 ]; then
    set -- -r t/
fi

echo "sanitize: prove $* with DATO_MODULE=$module TEST_NGINX_BINARY=$wrapper"

start=$(date +%s)
rc=0
# shellcheck disable=SC2086
env -u DATO_TEST_DEB -u LD_PRELOAD \
    DATO_MODULE="$module" TEST_NGINX_BINARY="$wrapper" \
    prove $PROVE_ARGS "$@" || rc=$?
echo "sanitize: prove exited with $rc after $(( $(date +%s) - start )) s"

found=$(find "$reports" -type f | sort)
rm -f "$out/summary.txt"

if [ -n "$found" ]; then
    # ASan stops a process at its first error: one report per file.  UBSan
    # goes on, and a worker may report the same line many times: each
    # distinct report is shown once, with how often it came.
    {
        declare -A seen=()
        for f in $found; do
            case $f in
            */asan.*)
                # the kind of error and where: one report per pair
                key=$(grep -m1 -E 'ERROR: |runtime error:' "$f" \
                          | sed -e 's/^==[0-9]*==//' -e 's/ on address.*//')
                key="$key|$(grep -m1 -E '^ +#0 ' "$f" | sed 's/0x[0-9a-f]*//g')"
                if [ -z "${seen[$key]:-}" ]; then
                    seen[$key]=$f
                    echo "=== ASan: $f"
                    head -60 "$f"
                    echo
                else
                    echo "=== ASan: $f: the same as ${seen[$key]}"
                fi
                ;;
            esac
        done

        ubsan=$(find "$reports" -type f -name 'ubsan.*' | sort)
        if [ -n "$ubsan" ]; then
            # shellcheck disable=SC2086
            awk 'BEGIN { RS = "" }
                 {
                     key = $0; sub(/\n.*/, "", key)
                     if (!(key in seen)) { order[++n] = key; text[key] = $0 }
                     seen[key]++
                 }
                 END {
                     for (i = 1; i <= n; i++) {
                         printf "=== UBSan, %d time(s):\n%s\n\n",
                                seen[order[i]], text[order[i]]
                     }
                 }' $ubsan
        fi
    } > "$out/summary.txt"

    echo "--- sanitize: sanitizer reports (also in $out/summary.txt) ---" >&2
    cat "$out/summary.txt" >&2
    echo "sanitize: FAILED: $(echo "$found" | wc -l) report file(s) in $reports" >&2
    exit 1
fi

if [ "$rc" -ne 0 ]; then
    echo "sanitize: FAILED: the test suite failed under the sanitizers" >&2
    exit "$rc"
fi

echo "sanitize: the test suite passed with no sanitizer report"
