#!/usr/bin/env bash
# bench/java_bench.sh: the Java part of the benchmark (bench/run.py runs it).
#
#   bash bench/java_bench.sh --base URL --local DIR [--runs N]
#
# URL: a FHIR base (e.g. http://127.0.0.1:PORT/fhir). Runs a system-level export ([base]/$export,
# all types) through the Java binding, one String per record (BulkRecord.json(), sum of lengths), and
# as the baseline reads DIR/*.ndjson (the same export's output, already on local disk) in pure
# Java (BufferedReader.readLine over UTF-8), touching each line the same way. Best of N runs
# (default 1), after an untimed warm-up of each when N > 1.
#
# Prints exactly one JSON object on stdout (everything else goes to stderr):
#   {"binding": {...}, "local": {...}, "ratio": binding records/s / local records/s}
# each side with records, bytes (NDJSON bytes, newlines included), seconds (wall),
# records_per_s, cpu_seconds (the whole JVM, the library's download threads included) and
# thread_cpu_seconds (the iterating thread); the binding also first_record_seconds. The
# binding's seconds include the kick-off and status polling: point URL at a server that answers
# the first status poll with the manifest (the sandbox: http://127.0.0.1:PORT/x/polls=0/fhir),
# or the poll interval (the sandbox's default Retry-After: 1 s) shows in them.
# Exits 1 when the record counts differ, 2 on bad arguments.
#
# Builds what is missing, quietly (output on stderr): libfhirbulk.so (cargo build --release --lib;
# honours CARGO_TARGET_DIR) and the binding's jar with the benchmark class (mvn package, tests
# skipped; rebuilt when bindings/java/src or pom.xml is newer). The library is loaded from
# $CARGO_TARGET_DIR/release, not from the copy inside the jar. The code is
# bindings/java/src/test/java/org/fhirbulk/Bench.java (compare); JAVA_OPTS adds JVM options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
java_dir="$root/bindings/java"

for arg in "$@"; do
    case "$arg" in -h|--help) sed -n '2,/^set -e/{/^#/p}' "$0" >&2; exit 0 ;; esac
done

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "java_bench.sh: '$1' not found: $2" >&2
        exit 1
    fi
}
need java "install a JDK 17 or newer"

target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
lib="$target/release/libfhirbulk.so"
if [ ! -f "$lib" ]; then
    need cargo "install Rust (https://rustup.rs)"
    echo "java_bench.sh: + cargo build --release --lib" >&2
    (cd "$root" && cargo build --release --lib --quiet) >&2
fi

jar="$java_dir/target/fhirbulk-0.1.0.jar"
cpfile="$java_dir/target/bench.classpath"
bench_class="$java_dir/target/test-classes/org/fhirbulk/Bench.class"
stale=0
if [ ! -f "$jar" ] || [ ! -f "$cpfile" ] || [ ! -f "$bench_class" ]; then
    stale=1
elif [ -n "$(find "$java_dir/src" "$java_dir/pom.xml" -newer "$jar" -print -quit)" ]; then
    stale=1
fi
if [ "$stale" = 1 ]; then
    need mvn "install Maven 3.8 or newer"
    echo "java_bench.sh: + mvn -q package -DskipTests (bindings/java)" >&2
    # Maven prints to stdout: keep stdout for the JSON result. (sed drops colour codes.)
    if ! (cd "$java_dir" && mvn -q -B -Dstyle.color=never -DskipTests package dependency:build-classpath \
        "-Dfhirbulk.native.dir=$target/release" -DincludeScope=runtime "-Dmdep.outputFile=$cpfile") \
        2>&1 | sed -u 's/\x1b\[[0-9;]*m//g' >&2; then
        echo "java_bench.sh: the Maven build failed" >&2
        exit 1
    fi
    touch "$jar"
fi

# shellcheck disable=SC2086  # JAVA_OPTS is a list of options
exec java -Xms2g -Xmx2g -XX:+AlwaysPreTouch ${JAVA_OPTS:-} "-Dfhirbulk.library.path=$lib" \
    -cp "$jar:$java_dir/target/test-classes:$(cat "$cpfile")" org.fhirbulk.Bench "$@"
