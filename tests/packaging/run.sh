#!/usr/bin/env bash
# Packaging tests: install libfhirbulk into a temporary prefix the way a user would
# (packaging/install.sh), then build against the installed files only and run against a sandbox:
#
#   - the install layout, the soname (readelf) and the symlinks
#   - examples/c/pkgconfig with pkg-config, linked to libfhirbulk.so and (pkg-config --static)
#     to libfhirbulk.a
#   - examples/cpp with CMake find_package(fhirbulk 0.1) (fhirbulk::fhirbulk, and
#     fhirbulk::fhirbulk_static), from a copy of the prefix moved elsewhere (relocatable)
#   - per-type record counts of every example equal the sandbox's ground truth; a bad URL makes
#     the C++ example fail cleanly
#   - tests/packaging/test_wrapper.cpp (fhirbulk.hpp) under AddressSanitizer + UBSan, its
#     attachment test counting against /_sandbox/truth?attachments=1
#
#   bash tests/packaging/run.sh
#
# Environment:
#   FHIRBULK_SKIP_CARGO_BUILD=1   install target/release and use target/debug's sandbox as they are
#   FHIRBULK_PACKAGING_PREFIX=DIR test DIR (an unpacked make dist tarball) instead of installing
#                                 a prefix (tests/dist/run.sh)
#
# Prints "N passed, M failed" as its last line; exits non-zero when anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirbulk-packaging.XXXXXX")
PREFIX=$WORK/prefix
SANDBOX=$ROOT/target/debug/fhirbulk-sandbox

# shellcheck source=tests/harness.sh
. "$ROOT/tests/harness.sh"

# ---- build and install ----------------------------------------------------------------------
# The release library once (packaging/install.sh: cargo build --release --lib, as the Java
# binding), the sandbox as the C tests build it (debug, --features sandbox): no rebuilds of
# either when the other suites ran first.
if [ "${FHIRBULK_SKIP_CARGO_BUILD:-0}" != 1 ]; then
    echo "== cargo build --features sandbox --bin fhirbulk-sandbox"
    cargo build --features sandbox --bin fhirbulk-sandbox
fi
T0=$SECONDS
if [ -n "${FHIRBULK_PACKAGING_PREFIX:-}" ]; then
    PREFIX=$(cd "$FHIRBULK_PACKAGING_PREFIX" && pwd)
    echo "== testing the prefix $PREFIX (not installing one)"
else
    echo "== packaging/install.sh $PREFIX"
    bash packaging/install.sh "$PREFIX"
    echo "(build + install: $((SECONDS - T0)) s)"
fi
T0=$SECONDS

echo "== install layout"
VERSION=$(sed -n 's/^#define FHIRBULK_VERSION "\(.*\)"$/\1/p' include/fhirbulk.h)
MAJOR=${VERSION%%.*}
layout_ok=1
for f in bin/fhirbulk "lib/libfhirbulk.so.$VERSION" lib/libfhirbulk.a include/fhirbulk.h include/fhirbulk.hpp \
    lib/pkgconfig/fhirbulk.pc lib/cmake/fhirbulk/fhirbulk-config.cmake \
    lib/cmake/fhirbulk/fhirbulk-config-version.cmake; do
    [ -f "$PREFIX/$f" ] && [ ! -L "$PREFIX/$f" ] || { echo "    missing $f"; layout_ok=0; }
done
[ "$(readlink "$PREFIX/lib/libfhirbulk.so.$MAJOR")" = "libfhirbulk.so.$VERSION" ] ||
    { echo "    bad symlink libfhirbulk.so.$MAJOR"; layout_ok=0; }
[ "$(readlink "$PREFIX/lib/libfhirbulk.so")" = "libfhirbulk.so.$MAJOR" ] ||
    { echo "    bad symlink libfhirbulk.so"; layout_ok=0; }
cmp -s include/fhirbulk.h "$PREFIX/include/fhirbulk.h" ||
    { echo "    fhirbulk.h differs"; layout_ok=0; }
if [ "$layout_ok" = 1 ]; then pass "install layout ($VERSION)"; else fail "install layout"; fi

soname=$(readelf -d "$PREFIX/lib/libfhirbulk.so.$VERSION" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" = "libfhirbulk.so.$MAJOR" ]; then
    pass "readelf: soname $soname"
else
    fail "readelf: soname is '$soname', want libfhirbulk.so.$MAJOR"
fi
if grep -rq -- "$ROOT" "$PREFIX/lib/cmake"; then
    fail "CMake config is relocatable (it names the checkout)"
elif grep -rq -- "$PREFIX" "$PREFIX/lib/cmake"; then
    fail "CMake config is relocatable (it names the prefix)"
else
    pass "CMake config is relocatable"
fi

# ---- build the examples against the installed files ------------------------------------------
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
echo "== pkg-config: --cflags --libs: $(pkg-config --cflags --libs fhirbulk);" \
    "--static --libs: $(pkg-config --static --libs fhirbulk)"
run "pkg-config --modversion fhirbulk = $VERSION" \
    test "$(pkg-config --modversion fhirbulk)" = "$VERSION" || true

# A copy of the example directory, the way a user starts from it.
cp -r examples/c/pkgconfig "$WORK/c"
STRICT_CFLAGS="-std=c11 -O2 -Wall -Wextra -Werror"
run "C example: make (pkg-config, shared)" make -C "$WORK/c" CFLAGS="$STRICT_CFLAGS" || true
run "C example: make static (pkg-config --static, libfhirbulk.a)" \
    make -C "$WORK/c" static CFLAGS="$STRICT_CFLAGS" || true
if [ -x "$WORK/c/export_summary" ]; then
    if grep -q "NEEDED.*\[libfhirbulk.so.$MAJOR\]" <<<"$(readelf -d "$WORK/c/export_summary")"; then
        pass "C example (shared) needs libfhirbulk.so.$MAJOR"
    else
        fail "C example (shared) needs libfhirbulk.so.$MAJOR"
    fi
fi
if [ -x "$WORK/c/export_summary_static" ]; then
    if grep -q 'NEEDED.*libfhirbulk' <<<"$(readelf -d "$WORK/c/export_summary_static")"; then
        fail "C example (static) does not need libfhirbulk.so"
    else
        pass "C example (static) does not need libfhirbulk.so"
    fi
fi

# CMake, from a copy of the prefix in another place: the config computes its paths.
MOVED=$WORK/moved/prefix
mkdir -p "$WORK/moved"
cp -a "$PREFIX" "$MOVED"
for variant in shared static; do
    bdir=$WORK/cpp-$variant
    run "C++ example: cmake find_package + build ($variant, relocated prefix)" bash -c '
        cmake -S examples/cpp -B "$1" -DCMAKE_PREFIX_PATH="$2" -DCMAKE_BUILD_TYPE=Release \
            -DFHIRBULK_STATIC=$([ "$3" = static ] && echo ON || echo OFF) \
            -DCMAKE_CXX_FLAGS="-Wall -Wextra -Werror" &&
        cmake --build "$1" -j2' _ "$bdir" "$MOVED" "$variant" || true
done
if [ -x "$WORK/cpp-shared/export_summary" ]; then
    # (grep reads a captured string: `cmd | grep -q` can fail with SIGPIPE under pipefail.)
    libs=$(ldd "$WORK/cpp-shared/export_summary")
    if grep -q "libfhirbulk.so.$MAJOR => $MOVED/lib/" <<<"$libs"; then
        pass "C++ example (shared) loads the relocated libfhirbulk.so.$MAJOR"
    else
        sed 's/^/    /' <<<"$libs"
        fail "C++ example (shared) loads the relocated libfhirbulk.so.$MAJOR"
    fi
fi

# find_package version checks.
mkdir -p "$WORK/cmake-version"
cat >"$WORK/cmake-version/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.14)
project(v LANGUAGES NONE)
find_package(fhirbulk ${WANT} QUIET)
message(STATUS "fhirbulk_FOUND=${fhirbulk_FOUND}")
EOF
version_ok=1
for want in "0.1:1" "0.1.0:1" ":1" "0.2:0" "1.0:0" "0.0.9:0"; do
    rm -rf "$WORK/cmake-version/b"
    found=$(cmake -S "$WORK/cmake-version" -B "$WORK/cmake-version/b" \
        -DCMAKE_PREFIX_PATH="$PREFIX" -DWANT="${want%%:*}" 2>&1 | sed -n 's/.*fhirbulk_FOUND=//p')
    [ "$found" = 1 ] && found=1 || found=0
    [ "$found" = "${want##*:}" ] ||
        { echo "    find_package(fhirbulk ${want%%:*}): found=$found"; version_ok=0; }
done
if [ "$version_ok" = 1 ]; then
    pass "find_package version: 0.1, 0.1.0, none accepted; 0.2, 1.0, 0.0.9 refused"
else
    fail "find_package version checks"
fi

# The wrapper tests, under ASan + UBSan.
SAN=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
# shellcheck disable=SC2046
run "compile tests/packaging/test_wrapper.cpp (C++17, asan+ubsan)" \
    g++ -std=c++17 -g -Wall -Wextra -Wconversion -Wsign-conversion -Werror "${SAN[@]}" \
    $(pkg-config --cflags fhirbulk) -o "$WORK/test_wrapper" tests/packaging/test_wrapper.cpp \
    $(pkg-config --libs fhirbulk) -Wl,-rpath,"$PREFIX/lib" -lpthread || true
echo "(compile: $((SECONDS - T0)) s)"
T0=$SECONDS

# ---- run against the sandbox ----------------------------------------------------------------
for f in "$SANDBOX"; do
    [ -x "$f" ] || { echo "missing $f (cargo build --features sandbox)" >&2; exit 1; }
done
start_sandbox "$SANDBOX" SB --patients 50 --records-per-file 7
TYPES=Patient,Observation
TRUTH=$(curl -fsS "$SB/_sandbox/truth?level=group&group=g1&_type=$TYPES")
echo "sandbox $SB; truth g1 ($TYPES): $TRUTH"
# {"Observation":80,"Patient":20} -> Observation=80,Patient=20 (sorted)
WANT=$(echo "$TRUTH" | tr -d '{}" ' | tr ',' '\n' | tr ':' '=' | sort | paste -sd,)
TOTAL=$(( $(echo "$TRUTH" | grep -o '[0-9]\+' | paste -sd+) ))
# The attachments of g1's documents (fhirbulk.hpp's save-mode test): those that fetch fine, and
# those that fail with attachment_max_bytes 1000000 (every other outcome but "inline").
DOC_TRUTH=$(curl -fsS "$SB/_sandbox/truth?level=group&group=g1&_type=DocumentReference,DiagnosticReport&attachments=1")
DOCS=$(grep -o '"outcome":"[a-z_]*"' <<<"$DOC_TRUTH" | grep -c '"ok"' || true)
DOC_ERRORS=$(grep -o '"outcome":"[a-z_]*"' <<<"$DOC_TRUTH" | grep -vc -e '"ok"' -e '"inline"' || true)
echo "attachments of g1: $DOCS fetch fine, $DOC_ERRORS fail"

# check_counts NAME OUTPUT: the example's "Type output N" rows must equal the truth.
check_counts() {
    local got
    got=$(awk '$2 == "output" { print $1 "=" $3 }' "$2" |
        sort | paste -sd,)
    if [ "$got" = "$WANT" ]; then
        pass "$1: counts equal the truth ($got)"
    else
        fail "$1: counts $got, want $WANT"
    fi
}

export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "leak:std::rt::lang_start" >"$WORK/lsan.supp"
export LSAN_OPTIONS="suppressions=$WORK/lsan.supp:print_suppressions=0"

for prog in c/export_summary c/export_summary_static cpp-{shared,static}/export_summary; do
    [ -x "$WORK/$prog" ] || continue
    if run "run $prog" timeout 60 "$WORK/$prog" "$SB/fhir" g1 "$TYPES"; then
        check_counts "$prog" "$WORK/step.log"
    fi
done

# A bad URL: nonzero exit, the error on stderr.
if [ -x "$WORK/cpp-shared/export_summary" ]; then
    rc=0
    timeout 60 "$WORK/cpp-shared/export_summary" "$SB/fhir" nope "$TYPES" >"$WORK/bad.log" 2>&1 ||
        rc=$?
    sed 's/^/    /' "$WORK/bad.log"
    if [ "$rc" = 1 ] && grep -q 'export failed (not_found, status 303, HTTP 404)' "$WORK/bad.log" &&
        grep -q '"http_status":404' "$WORK/bad.log"; then
        pass "C++ example fails cleanly on a missing group (exit 1, HTTP 404 in the message)"
    else
        fail "C++ example fails cleanly on a missing group (exit $rc)"
    fi
    rc=0
    timeout 60 "$WORK/cpp-shared/export_summary" "http://127.0.0.1:1/fhir" g1 \
        >"$WORK/bad.log" 2>&1 || rc=$?
    sed 's/^/    /' "$WORK/bad.log"
    if [ "$rc" = 1 ] && grep -q 'export failed (network, status 200)' "$WORK/bad.log"; then
        pass "C++ example fails cleanly on an unreachable server (exit 1, network error)"
    else
        fail "C++ example fails cleanly on an unreachable server (exit $rc)"
    fi
fi

# The installed command: its version, no test server inside, and an export that writes the
# truth (one JSON line per record) into a directory.
if [ -x "$PREFIX/bin/fhirbulk" ]; then
    run "installed fhirbulk --version" "$PREFIX/bin/fhirbulk" --version || true
    cli_help=$("$PREFIX/bin/fhirbulk" --help || true)
    if grep -q '^  sandbox' <<<"$cli_help" || ! grep -q '^  export' <<<"$cli_help"; then
        fail "the installed fhirbulk carries the test server (the cli feature pulled in sandbox)"
    else
        pass "the installed fhirbulk has no sandbox command"
    fi
    if run "installed fhirbulk export -g g1 -t $TYPES" timeout 120 "$PREFIX/bin/fhirbulk" export \
        --base-url "$SB/fhir" -g g1 -t "$TYPES" --out "$WORK/cli-out" -q; then
        got=$(for t in ${TYPES//,/ }; do
            echo "$t=$(cat "$WORK/cli-out/$t".*.ndjson | grep -c .)"; done | sort | paste -sd,)
        if [ "$got" = "$WANT" ]; then
            pass "installed fhirbulk: records per type equal the truth ($got)"
        else
            fail "installed fhirbulk: records per type $got, want $WANT"
        fi
    fi
fi

# job_deletes: DELETE requests for export jobs the sandbox has received.
job_deletes() {
    curl -fsS "$SB/_sandbox/requests" | grep -o '"method":"DELETE","path":"[^"]*"' |
        grep -c /jobs/ || true
}
if [ -x "$WORK/test_wrapper" ]; then
    curl -fsS -X DELETE "$SB/_sandbox/requests" >/dev/null
    run "fhirbulk.hpp tests (asan+ubsan)" timeout 120 "$WORK/test_wrapper" "$SB" "$TOTAL" "$DOCS" "$DOC_ERRORS" || true
    # The early break, the export replaced by a move assignment (both freed unfinished) and
    # cancel() DELETE their server jobs; the checkpointed one (delete_on_cancel false) does not.
    sleep 0.2
    deletes=$(job_deletes)
    if [ "$deletes" -ge 3 ]; then
        pass "early break, move-assignment, cancel(): server jobs DELETEd ($deletes DELETEs)"
    else
        fail "early break, move-assignment, cancel(): server jobs DELETEd ($deletes, want 3)"
    fi
fi
echo "(run: $((SECONDS - T0)) s)"

summary
