#!/usr/bin/env bash
# Build and test the fhirbulk Spark connector against the sandbox server, Spark in local mode.
#
#   bindings/spark/run-tests.sh            # from anywhere in the repository
#   bindings/spark/run-tests.sh --rebuild  # run cargo even when the binaries exist
#
# 1. builds target/release/libfhirbulk.so (--features parquet) and target/debug/fhirbulk-sandbox
#    when missing (as bindings/java/run-tests.sh does),
# 2. installs the Java binding into the local Maven repository (mvn install -DskipTests: the
#    jar with the library, and its tests jar, whose Sandbox class starts the sandbox),
# 3. runs `mvn package` here: the JUnit suite with Spark in local[2,4] against the sandbox over
#    HTTP, then target/fhirbulk-spark-<version>.jar (the jar for spark.jars),
# 4. bindings/spark/test_pyspark.py in a virtualenv with pyspark (target/pyspark-venv, made
#    once): examples/python/spark_export.py's reader with only that jar on spark.jars.
#
# Needs: cargo, a JDK 17+, Maven 3.8+ and Python 3.9+ with venv (Maven Central and PyPI reachable
# on the first run: Spark's jars, ~300 MB, and pyspark, ~450 MB). Honours CARGO_TARGET_DIR,
# MVN_ARGS and PYSPARK_VERSION.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
rebuild=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "run-tests.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
for tool in cargo java mvn; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run-tests.sh: '$tool' not found" >&2; exit 1; }
done

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

# The PySpark whose Spark matches the connector's (pom.xml spark.version).
PYSPARK_VERSION="${PYSPARK_VERSION:-4.2.0}"
strip_colour() { sed -u 's/\x1b\[[0-9;]*m//g'; }
echo "+ (bindings/java) mvn -q -B install -DskipTests -Dfhirbulk.native.dir=$target/release"
(cd "$root/bindings/java" && mvn -q -B -Dstyle.color=never install -DskipTests \
    "-Dfhirbulk.native.dir=$target/release" 2>&1 | strip_colour; exit "${PIPESTATUS[0]}")

cd "$here"
reports="$here/target/surefire-reports"
rm -rf "$reports"
echo "+ (bindings/spark) mvn -q -B package ${MVN_ARGS:-}"
set +e
# shellcheck disable=SC2086  # MVN_ARGS is a list of arguments
mvn -q -B -Dstyle.color=never package ${MVN_ARGS:-} 2>&1 | strip_colour
status=${PIPESTATUS[0]}
set -e

attr() { sed -n "s/.*<testsuite[^>]* $1=\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n1; }
echo
echo "Surefire summary (bindings/spark/target/surefire-reports):"
total=0; bad=0
if compgen -G "$reports/TEST-*.xml" >/dev/null; then
    for f in "$reports"/TEST-*.xml; do
        t="$(attr tests "$f")"; fl="$(attr failures "$f")"; e="$(attr errors "$f")"
        printf '  %-40s %3d tests, %d failures, %d errors (%s s)\n' "$(attr name "$f")" "$t" "$fl" "$e" "$(attr time "$f")"
        total=$((total + t)); bad=$((bad + fl + e))
    done
    echo "Tests run: $total, failed: $bad"
    if [ "$bad" -gt 0 ]; then
        grep -h -B1 -E '<(failure|error)( |>)' "$reports"/TEST-*.xml \
            | sed -n 's/.*<testcase name="\([^"]*\)" classname="\([^"]*\)".*/  \2.\1/p' || true
        echo "(details: $reports/*.txt and *-output.txt)"
    fi
else
    echo "  no test reports (the build failed before the tests; see the Maven output above)"
fi
if [ "$status" -ne 0 ] || [ "$bad" -gt 0 ]; then
    echo "FAILED" >&2
    exit 1
fi

# PySpark with only the shaded jar (a clean classpath: PySpark's own Spark jars plus ours).
jar="$here/target/fhirbulk-spark-$(sed -n 's:.*<version>\([^<]*\)</version>.*:\1:p' pom.xml | head -n1).jar"
venv="$here/target/pyspark-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pyspark" 2>/dev/null; then
    echo "+ python3 -m venv $venv && pip install pyspark==$PYSPARK_VERSION"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "pyspark==$PYSPARK_VERSION"
fi
echo "+ $venv/bin/python bindings/spark/test_pyspark.py"
"$venv/bin/python" "$here/test_pyspark.py" "$jar" "$FHIRBULK_SANDBOX_BIN" 2> "$here/target/pyspark-test.log" \
    || { echo "PySpark test FAILED (log: bindings/spark/target/pyspark-test.log)" >&2; tail -n 30 "$here/target/pyspark-test.log" >&2; exit 1; }
echo "OK: target/fhirbulk-spark-$(sed -n 's:.*<version>\([^<]*\)</version>.*:\1:p' pom.xml | head -n1).jar"
