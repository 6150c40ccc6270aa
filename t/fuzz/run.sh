#!/usr/bin/env bash
# Builds the libFuzzer harness of the payload parser and runs it.
#
#   t/fuzz/run.sh                  fuzz for $FUZZ_SECONDS (default 60) seconds
#   t/fuzz/run.sh FILE...          run the harness once on each FILE (to
#                                  replay a crash-*, leak-* or timeout-* file)
#
# Environment:
#   FUZZ_SECONDS      how long to fuzz (default 60)
#   FUZZ_KEEP_CORPUS  1: keep build/fuzz/corpus from the last run and add to
#                     it (default: start afresh from the seeds in
#                     t/fuzz/corpus, so that every run is alike)
#   FUZZ_ARGS         more libFuzzer flags, e.g. "-only_ascii=1 -verbosity=2"
#   CLANG             the compiler (default clang)
#
# The scanner has a 16-byte SSE2 string scan and a portable 8-byte one: two
# harnesses are built, the second with -DNGX_HTTP_DATO_PORTABLE, and each
# fuzzes for half the time, on the same corpus.
#
# Exits 0 when the run ended without a finding, and non-zero on any crash,
# sanitizer report (ASan, UBSan, LeakSanitizer), broken invariant of the
# harness (an abort()), timeout (5 s for one input) or out-of-memory; the
# input that caused it is kept in build/fuzz/artifacts/.
#
# Installs clang, the compiler-rt runtimes (libclang-rt-14-dev: libFuzzer
# and the sanitizers) and libjansson-dev with apt-get when one is missing
# (Debian bookworm, as root).

set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

: "${FUZZ_SECONDS:=60}" "${FUZZ_KEEP_CORPUS:=0}" "${FUZZ_ARGS:=}"
: "${CLANG:=clang}"

out=$top/build/fuzz
bin=$out/fuzz_parse
work=$out/corpus
artifacts=$out/artifacts
seeds=$top/t/fuzz/corpus
dict=$top/t/fuzz/fuzz_parse.dict

PACKAGES="clang libclang-rt-14-dev libjansson-dev libc6-dev"

install_missing() {
    sh "$(dirname "$0")/../install.sh" $PACKAGES
}

# build BINARY [CFLAGS...]
build() {
    local to=$1
    shift
    mkdir -p "$out"
    "$CLANG" -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=undefined -Wall -Wextra "$@" \
        -I src t/fuzz/fuzz_parse.c src/ngx_http_dato_parse.c \
        src/ngx_http_dato_scan.c src/ngx_http_dato_valid.c -ljansson \
        -o "$to.new" > "$out/build.log" 2>&1 && mv "$to.new" "$to"
}

install_missing

if ! build "$bin" || ! build "$bin-portable" -DNGX_HTTP_DATO_PORTABLE; then
    cat "$out/build.log" >&2
    echo "fuzz: the harness does not build" >&2
    exit 2
fi

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"

# replay: run both harnesses once on each file given
if [ $# -gt 0 ]; then
    "$bin" -timeout=5 -rss_limit_mb=2048 "$@"
    exec "$bin-portable" -timeout=5 -rss_limit_mb=2048 "$@"
fi

if [ "$FUZZ_KEEP_CORPUS" != 1 ]; then
    rm -rf "$work"
fi
rm -rf "$artifacts"
mkdir -p "$work" "$artifacts"
cp "$seeds"/* "$work"/

half=$(( (FUZZ_SECONDS + 1) / 2 ))
rc=0
: > "$out/fuzz.log"

for b in "$bin" "$bin-portable"; do
    echo "fuzz: running $b for $half s (log in $out/fuzz.log)"

    # shellcheck disable=SC2086
    "$b" -max_total_time="$half" -max_len=65536 -timeout=5 \
        -rss_limit_mb=2048 -dict="$dict" -artifact_prefix="$artifacts/" \
        -print_final_stats=1 $FUZZ_ARGS "$work" >> "$out/fuzz.log" 2>&1 \
        || rc=$?

    if [ "$rc" -ne 0 ]; then
        break
    fi
done

# what libFuzzer says last: the final statistics, or the report of a finding
grep -E '^(stat::|Done |#[0-9]+[[:space:]]+DONE)' "$out/fuzz.log" || true

# a finding is a non-zero exit or an artifact (slow-unit-* files are only a
# hint, not a failure)
found=$(find "$artifacts" -type f ! -name 'slow-unit-*' | sort)

if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    echo "--- fuzz: FAILED (libFuzzer exit code $rc) ---" >&2
    grep -n -A40 -E '==ERROR|runtime error:|invariant broken|ERROR: libFuzzer|SUMMARY' \
        "$out/fuzz.log" | head -80 >&2 || tail -40 "$out/fuzz.log" >&2
    for f in $found; do
        echo "input kept in $f ($(stat -c %s "$f") bytes); replay with: t/fuzz/run.sh $f" >&2
    done
    exit 1
fi

echo "fuzz: no finding in $FUZZ_SECONDS s; corpus in $work ($(find "$work" -type f | wc -l) inputs)"
