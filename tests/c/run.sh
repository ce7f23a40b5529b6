#!/usr/bin/env bash
# C tests of libfhirbulk: header checks (C11 and C++17), the C test programs under
# AddressSanitizer + UndefinedBehaviorSanitizer, the full export once more under valgrind, and
# the example program, all against real sandbox servers on ephemeral ports.
#
#   bash tests/c/run.sh            (from anywhere; builds with `cargo build --features sandbox,parquet`)
#
# Environment:
#   FHIRBULK_SKIP_CARGO_BUILD=1   use target/debug as it is
#   FHIRBULK_NO_VALGRIND=1        skip the valgrind run
#   FHIRBULK_LEAK_CHECK=0         ASan without LeakSanitizer (default: leaks are errors)
#
# Prints "N passed, M failed" as its last line; exits non-zero when anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
LIBDIR=$ROOT/target/debug
OUT=$ROOT/target/c-tests
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirbulk-ctests.XXXXXX")

# shellcheck source=tests/harness.sh
. "$ROOT/tests/harness.sh"

# run_log NAME LOGFILE CMD...: run a step, show its output indented, record pass/fail.
run_log() {
    local name=$1 log=$2
    shift 2
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    step "$name" "$log" "$rc"
}

# ---- build ----------------------------------------------------------------------------------
if [ "${FHIRBULK_SKIP_CARGO_BUILD:-0}" != 1 ]; then
    echo "== cargo build --features sandbox,parquet"
    cargo build --features sandbox,parquet
fi
for f in "$LIBDIR/libfhirbulk.so" "$LIBDIR/fhirbulk-sandbox" include/fhirbulk.h; do
    [ -e "$f" ] || { echo "missing $f (run: cargo build --features sandbox,parquet)" >&2; exit 1; }
done

# ---- sandbox servers ------------------------------------------------------------------------

# Many small files (7 records per file) for the full export; large files for slow downloads.
start_sandbox "$LIBDIR/fhirbulk-sandbox" SMALL --patients 50 --records-per-file 7
start_sandbox "$LIBDIR/fhirbulk-sandbox" BIG --patients 300 --records-per-file 100000
# HTTPS with the sandbox's test CA; the second also requires a client certificate.
start_sandbox "$LIBDIR/fhirbulk-sandbox" TLS --patients 20 --records-per-file 7 --tls-dir "$WORK/tls"
start_sandbox "$LIBDIR/fhirbulk-sandbox" MTLS --patients 20 --records-per-file 7 \
    --tls-dir "$WORK/mtls" --mtls

TYPES=Patient,Observation,Condition,Encounter
TRUTH_TYPES=$(curl -fsS "$SMALL/_sandbox/truth?level=group&group=g1&_type=$TYPES")
TRUTH_ALL=$(curl -fsS "$SMALL/_sandbox/truth?level=group&group=g1")
echo "truth g1 ($TYPES): $TRUTH_TYPES"
TRUTH_TLS=$(curl -fsS --cacert "$WORK/tls/ca.pem" "$TLS/_sandbox/truth?level=group&group=g1&_type=$TYPES")
TYPES_JSON='["Patient","Observation","Condition","Encounter"]'
TRUTH_PO=$(curl -fsS "$SMALL/_sandbox/truth?level=group&group=g1&_type=Patient,Observation")
echo "truth g1 (all):    $TRUTH_ALL"
# The attachments of g1's DocumentReference and DiagnosticReport resources, one line each for
# test_attachments.
curl -fsS "$SMALL/_sandbox/truth?level=group&group=g1&_type=DocumentReference,DiagnosticReport&attachments=1" |
    python3 -c 'import json, sys
for a in json.load(sys.stdin):
    print(a["outcome"], a["resource"], a["position"], a["sha1"])' >"$WORK/attachments.txt"

# ---- header ---------------------------------------------------------------------------------
echo "== header"
run_log "header compiles as C11" "$OUT/header-c.log" \
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -Iinclude -fsyntax-only -x c include/fhirbulk.h
run_log "header compiles as C++17" "$OUT/header-cxx.log" \
    g++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude -fsyntax-only -x c++ include/fhirbulk.h

# ---- compile --------------------------------------------------------------------------------
CFLAGS=(-std=c11 -Wall -Wextra -Werror -Iinclude -g)
SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
LDFLAGS=(-L"$LIBDIR" -lfhirbulk -lpthread -Wl,-rpath,"$LIBDIR")
TESTS=(test_misuse test_errors test_full_export test_cancel test_threads test_tls test_arrow test_partitions test_native test_attachments)

echo "== compile"
for t in "${TESTS[@]}"; do
    run_log "compile $t (asan+ubsan)" "$OUT/$t.compile.log" \
        gcc "${CFLAGS[@]}" "${SAN[@]}" -o "$OUT/$t" "tests/c/$t.c" "${LDFLAGS[@]}"
done
run_log "compile test_full_export (for valgrind)" "$OUT/test_full_export.vg.compile.log" \
    gcc "${CFLAGS[@]}" -O0 -o "$OUT/test_full_export.plain" tests/c/test_full_export.c "${LDFLAGS[@]}"
run_log "compile examples/c/export_summary.c" "$OUT/export_summary.compile.log" \
    gcc "${CFLAGS[@]}" "${SAN[@]}" -o "$OUT/export_summary" examples/c/export_summary.c "${LDFLAGS[@]}"

# ---- run under ASan + UBSan -----------------------------------------------------------------
export ASAN_OPTIONS="detect_leaks=${FHIRBULK_LEAK_CHECK:-1}:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Leaks inside the Rust runtime's process-lifetime statics are not ours to report.
echo "leak:std::rt::lang_start" >"$WORK/lsan.supp"
export LSAN_OPTIONS="suppressions=$WORK/lsan.supp:print_suppressions=0"

args_for() {
    case $1 in
        test_misuse) echo "$SMALL" ;;
        test_errors) echo "$SMALL" ;;
        test_full_export) printf '%s\n%s\n%s\n' "$SMALL" "$TRUTH_TYPES" "$TYPES" ;;
        test_cancel) printf '%s\n%s\n%s\n' "$SMALL" "$BIG" "$TRUTH_ALL" ;;
        test_threads) echo "$SMALL" ;;
        test_arrow) printf '%s\n' "$SMALL" "$TRUTH_PO" '["Patient","Observation"]' ;;
        test_partitions) printf '%s\n' "$SMALL" "$TRUTH_TYPES" "$TYPES_JSON" ;;
        test_native) printf '%s\n' "$SMALL" "$TRUTH_PO" ;;
        test_attachments) printf '%s\n' "$SMALL" "$WORK/attachments.txt" ;;
        test_tls) printf '%s\n' "$TLS" "$MTLS" "$WORK/tls" "$WORK/mtls" "$TRUTH_TLS" "$TYPES_JSON" ;;
    esac
}

# DELETE requests for export jobs (.../jobs/N) the sandbox at $1 has received.
job_deletes() {
    curl -fsS "$1/_sandbox/requests" | grep -o '"method":"DELETE","path":"[^"]*/jobs/[^"]*"' | wc -l
}

echo "== run (AddressSanitizer + UndefinedBehaviorSanitizer)"
for t in "${TESTS[@]}"; do
    [ -x "$OUT/$t" ] || continue # its compile step already failed
    mapfile -t ARGS < <(args_for "$t")
    if [ "$t" = test_cancel ]; then
        curl -fsS -X DELETE "$SMALL/_sandbox/requests" >/dev/null
        curl -fsS -X DELETE "$BIG/_sandbox/requests" >/dev/null
    fi
    run_log "$t" "$OUT/$t.log" timeout 300 "$OUT/$t" "${ARGS[@]}"
    if [ "$t" = test_cancel ]; then
        # export_cancel / export_free of an unfinished export DELETE the server's job: the two
        # exports cancelled while waiting on SMALL, the one cancelled while downloading on BIG.
        sleep 0.2
        small=$(job_deletes "$SMALL") big=$(job_deletes "$BIG")
        if [ "$small" -ge 2 ] && [ "$big" -ge 1 ]; then
            pass "cancel DELETEs the server job ($small + $big DELETE requests)"
        else
            fail "cancel DELETEs the server job (got $small DELETEs on SMALL, want >= 2; $big on BIG, want >= 1)"
        fi
    fi
done

if [ -x "$OUT/export_summary" ]; then
    run_log "example export_summary (group g1)" "$OUT/export_summary.log" \
        timeout 120 "$OUT/export_summary" "$SMALL/fhir" g1 "$TYPES"
    if [ -s "$OUT/export_summary.log" ] && ! grep -q '^total ' "$OUT/export_summary.log"; then
        fail "example export_summary prints a total line"
    fi
    # Over HTTPS, with the test CA and the client certificate from the environment.
    run_log "example export_summary over HTTPS with mutual TLS" "$OUT/export_summary.tls.log" \
        env FHIRBULK_CA_BUNDLE="$WORK/mtls/ca.pem" FHIRBULK_CLIENT_CERT="$WORK/mtls/client.pem" \
        timeout 120 "$OUT/export_summary" "$MTLS/fhir" g1 "$TYPES"
    if [ -s "$OUT/export_summary.tls.log" ] && ! grep -q '^total ' "$OUT/export_summary.tls.log"; then
        fail "example export_summary over HTTPS prints a total line"
    fi
    # On failure: non-zero exit, the message and the JSON detail on stderr.
    rc=0
    timeout 60 "$OUT/export_summary" "$SMALL/fhir" no-such-group >"$OUT/export_summary.err.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && grep -q '"code":303' "$OUT/export_summary.err.log"; then
        pass "example export_summary reports failure"
    else
        sed 's/^/    /' "$OUT/export_summary.err.log"
        fail "example export_summary reports failure (exit $rc)"
    fi
fi

# ---- valgrind -------------------------------------------------------------------------------
if [ "${FHIRBULK_NO_VALGRIND:-0}" = 1 ]; then
    echo "== valgrind skipped (FHIRBULK_NO_VALGRIND=1)"
elif ! command -v valgrind >/dev/null; then
    fail "valgrind test_full_export (valgrind not installed)"
elif [ -x "$OUT/test_full_export.plain" ]; then
    echo "== run under valgrind"
    run_log "test_full_export under valgrind" "$OUT/test_full_export.valgrind.log" \
        timeout 900 valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --track-origins=yes --quiet \
        "$OUT/test_full_export.plain" "$SMALL" "$TRUTH_TYPES" "$TYPES"
fi

summary
