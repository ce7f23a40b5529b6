#!/usr/bin/env bash
# Build and test the fhirbulk Java binding against the sandbox server.
#
#   bindings/java/run-tests.sh            # from anywhere in the repository
#   bindings/java/run-tests.sh --rebuild  # run cargo even when the binaries exist
#
# 1. builds target/release/libfhirbulk.so (cargo build --release --lib --features parquet) if it is missing,
# 2. builds target/debug/fhirbulk-sandbox (cargo build --features sandbox --bin fhirbulk-sandbox)
#    if it is missing (FHIRBULK_SANDBOX_BIN overrides which sandbox the tests start),
# 3. runs `mvn -q -B package`: compiles, runs the JUnit suite against the sandbox over HTTP,
#    builds target/fhirbulk-<version>.jar (classes + linux-x86-64/libfhirbulk.so) and then runs
#    BundledJarTest, which loads the library from that jar in a separate, clean JVM,
# 4. prints Surefire's summary. Exits non-zero when anything fails.
#
# Needs: cargo (Rust), a JDK 17+ and Maven 3.8+ (Maven Central reachable on the first run).
# Honours CARGO_TARGET_DIR.
# Extra Maven arguments: MVN_ARGS="-Dfhirbulk.native.dir=../../target/debug" bindings/java/run-tests.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rebuild=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "run-tests.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "run-tests.sh: '$1' not found: $2" >&2
        exit 1
    fi
}
need cargo "install Rust (https://rustup.rs)"
need java "install a JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless)"
need mvn "install Maven 3.8 or newer (Debian: apt-get install maven)"
java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
if [ -n "$java_major" ] && [ "${java_major%%.*}" -lt 17 ] 2>/dev/null; then
    echo "run-tests.sh: Java $java_major found; the binding needs Java 17 or newer" >&2
    exit 1
fi

cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
if [ "$rebuild" = 1 ] || [ ! -f "$target/release/libfhirbulk.so" ]; then
    echo "+ cargo build --release --lib --features parquet"
    cargo build --release --lib --features parquet
fi
if [ -z "${FHIRBULK_SANDBOX_BIN:-}" ]; then
    if [ "$rebuild" = 1 ] || [ ! -x "$target/debug/fhirbulk-sandbox" ]; then
        echo "+ cargo build --features sandbox --bin fhirbulk-sandbox"
        cargo build --features sandbox --bin fhirbulk-sandbox
    fi
    export FHIRBULK_SANDBOX_BIN="$target/debug/fhirbulk-sandbox"
fi

cd "$here"
reports="$here/target/surefire-reports"
rm -rf "$reports"
status=0
echo "+ mvn -q -B package -Dfhirbulk.native.dir=$target/release ${MVN_ARGS:-}"
# (sed drops the colour resets Debian's Maven prints even in batch mode.)
set +e
# shellcheck disable=SC2086  # MVN_ARGS is a list of arguments
mvn -q -B -Dstyle.color=never package "-Dfhirbulk.native.dir=$target/release" ${MVN_ARGS:-} 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g'
status=${PIPESTATUS[0]}
set -e

# Surefire's summary, from its XML reports (mvn -q prints nothing on success).
attr() { sed -n "s/.*<testsuite[^>]* $1=\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n1; }
total=0; failures=0; errors=0; skipped=0
echo
echo "Surefire summary (bindings/java/target/surefire-reports):"
if compgen -G "$reports/TEST-*.xml" >/dev/null; then
    for f in "$reports"/TEST-*.xml; do
        name="$(attr name "$f")"; t="$(attr tests "$f")"; fl="$(attr failures "$f")"
        e="$(attr errors "$f")"; s="$(attr skipped "$f")"; secs="$(attr time "$f")"
        printf '  %-34s %3d tests, %d failures, %d errors, %d skipped (%s s)\n' \
            "$name" "$t" "$fl" "$e" "$s" "$secs"
        total=$((total + t)); failures=$((failures + fl)); errors=$((errors + e)); skipped=$((skipped + s))
    done
    printf 'Tests run: %d, Failures: %d, Errors: %d, Skipped: %d\n' "$total" "$failures" "$errors" "$skipped"
    if [ $((failures + errors)) -gt 0 ]; then
        echo
        echo "Failed tests:"
        grep -h -B1 -E '<(failure|error)( |>)' "$reports"/TEST-*.xml \
            | sed -n 's/.*<testcase name="\([^"]*\)" classname="\([^"]*\)".*/  \2.\1/p' || true
        echo "(details: $reports/*.txt)"
    fi
else
    echo "  no test reports (the build failed before the tests; see the Maven output above)"
fi

if [ "$status" -ne 0 ] || [ $((failures + errors)) -gt 0 ]; then
    echo "FAILED" >&2
    exit 1
fi
echo "OK: target/$(cd "$here/target" && ls fhirbulk-*.jar | grep -v -e sources -e javadoc -e tests | head -n1)"
