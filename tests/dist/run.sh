#!/usr/bin/env bash
# make test-dist: the release artifacts of make dist (packaging/dist.sh), used the way each kind
# of user would, against a sandbox, with what each delivers compared with the sandbox's truth
# (the exact sorted list of Type/id):
#
#   - every shipped ELF file (the library in the wheels, the jar and the tarballs; the commands):
#     its architecture (readelf -h), the highest GLIBC_ symbol version it needs (readelf -V)
#     no newer than 2.28, and nothing NEEDED beyond glibc's own libraries; per platform, the
#     wheel, the jar and the tarball carry the very same libfhirbulk.so
#   - Python: twine check; auditwheel show agrees with each wheel's tag; the x86_64 wheel
#     installed with pip into a fresh virtualenv whose PATH has no cargo or rustc, then an
#     export; the sdist built from source into a wheel, then an export
#   - Java: the jar's contents (both libraries, the sources and javadoc jars); the jar and its
#     pom installed into an empty local Maven repository, a project with that one dependency
#     resolving its class path (the jar + JNA), then an export from that class path alone
#   - C/C++: the x86_64 tarball unpacked, then tests/packaging/run.sh against it (pkg-config C
#     example, CMake C++ example, the C++ wrapper tests, bin/fhirbulk) and a CLI export
#   - aarch64: the command run under qemu-user (Debian's qemu-user and libc6-arm64-cross):
#     --version, then an export against the sandbox
#
#   bash tests/dist/run.sh        (make test-dist runs make dist first)
#
# Environment:
#   FHIRBULK_DIST_DIR=dist        the artifacts to check
#   FHIRBULK_DIST_TOOLS=DIR       make dist's tools (default target/dist-tools)
#
# Prints "N passed, M failed" as its last line; exits non-zero when anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fhirbulk-dist-test.XXXXXX")
DIST=$(cd "${FHIRBULK_DIST_DIR:-dist}" && pwd)
TOOLS=$(cd "${FHIRBULK_DIST_TOOLS:-target/dist-tools}" && pwd)
SANDBOX=$ROOT/target/debug/fhirbulk-sandbox
GLIBC_MAX=2.28
VERSION=$(sed -n 's/^#define FHIRBULK_VERSION "\(.*\)"$/\1/p' include/fhirbulk.h)
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=tests/harness.sh
. "$ROOT/tests/harness.sh"

# ---- the artifacts --------------------------------------------------------------------------
WHEEL_X86=$DIST/python/fhirbulk-$VERSION-py3-none-manylinux_2_28_x86_64.whl
WHEEL_ARM=$DIST/python/fhirbulk-$VERSION-py3-none-manylinux_2_28_aarch64.whl
SDIST=$DIST/python/fhirbulk-$VERSION.tar.gz
JAR=$DIST/java/fhirbulk-$VERSION.jar
POM=$DIST/java/fhirbulk-$VERSION.pom
TAR_X86=$DIST/c/fhirbulk-$VERSION-linux-x86_64.tar.gz
TAR_ARM=$DIST/c/fhirbulk-$VERSION-linux-aarch64.tar.gz
CLI_X86=$DIST/cli/fhirbulk-$VERSION-linux-x86_64
CLI_ARM=$DIST/cli/fhirbulk-$VERSION-linux-aarch64
missing=()
for f in "$WHEEL_X86" "$WHEEL_ARM" "$SDIST" "$JAR" "${JAR%.jar}-sources.jar" "${JAR%.jar}-javadoc.jar" \
    "$POM" "$TAR_X86" "$TAR_ARM" "$CLI_X86" "$CLI_ARM" "$DIST/SHA256SUMS"; do
    [ -f "$f" ] || missing+=("${f#"$DIST"/}")
done
if [ "${#missing[@]}" -eq 0 ]; then
    pass "make dist wrote every artifact ($(find "$DIST" -type f | wc -l) files in $DIST)"
else
    fail "missing artifacts: ${missing[*]} (run make dist)"
    summary
fi
run "SHA256SUMS matches the artifacts" bash -c 'cd "$1" && sha256sum -c --quiet SHA256SUMS' _ "$DIST" || true

# ---- every ELF file shipped -----------------------------------------------------------------
ELF=$WORK/elf
mkdir -p "$ELF"/{x86_64,aarch64}
for arch in x86_64 aarch64; do
    whl=$WHEEL_X86 tarball=$TAR_X86 cli=$CLI_X86 jna=linux-x86-64
    [ "$arch" = aarch64 ] && whl=$WHEEL_ARM tarball=$TAR_ARM cli=$CLI_ARM jna=linux-aarch64
    d=$ELF/$arch
    unzip -p "$whl" fhirbulk/_native/lib_native.so >"$d/wheel-native.so"
    unzip -p "$JAR" "$jna/libfhirbulk.so" >"$d/jar-libfhirbulk.so"
    tar -xzf "$tarball" -C "$d"
    prefix=$d/fhirbulk-$VERSION-linux-$arch
    cp "$prefix/lib/libfhirbulk.so.$VERSION" "$d/tarball-libfhirbulk.so"
    cp "$prefix/bin/fhirbulk" "$d/tarball-fhirbulk"
    cp "$cli" "$d/cli-fhirbulk"
done

# The libraries glibc itself ships: nothing else may be NEEDED.
GLIBC_LIBS='^(libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libutil\.so\.1|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
for arch in x86_64 aarch64; do
    want_machine="Advanced Micro Devices X86-64"
    [ "$arch" = aarch64 ] && want_machine=AArch64
    for f in "$ELF/$arch"/*-*; do
        [ -f "$f" ] || continue
        name="$arch/$(basename "$f")"
        machine=$(readelf -h "$f" | sed -n 's/^ *Machine: *//p')
        newest=$({ readelf -V -W "$f" | grep -o 'Name: GLIBC_[0-9.]*' || true; } |
            sed 's/Name: GLIBC_//' | sort -Vu | tail -1)
        needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | paste -sd' ')
        foreign=$(tr ' ' '\n' <<<"$needed" | grep -Ev "$GLIBC_LIBS" | paste -sd' ' || true)
        if [ "$machine" != "$want_machine" ]; then
            fail "$name: machine '$machine', want '$want_machine'"
        elif [ -z "$newest" ] || [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MAX" | sort -V | tail -1)" != "$GLIBC_MAX" ]; then
            fail "$name: needs GLIBC_${newest:-?}, want at most GLIBC_$GLIBC_MAX"
        elif [ -n "$foreign" ]; then
            fail "$name: NEEDED beyond glibc: $foreign"
        else
            pass "$name: $machine, newest symbol GLIBC_$newest (<= $GLIBC_MAX), NEEDED $needed"
        fi
    done
    sums=$(sha256sum "$ELF/$arch"/{wheel-native,jar-libfhirbulk,tarball-libfhirbulk}.so | awk '{print $1}' | sort -u | wc -l)
    if [ "$sums" = 1 ]; then
        pass "$arch: the wheel, the jar and the tarball carry the same libfhirbulk.so"
    else
        fail "$arch: the wheel, the jar and the tarball carry different libraries"
    fi
    if cmp -s "$ELF/$arch/tarball-fhirbulk" "$ELF/$arch/cli-fhirbulk"; then
        pass "$arch: the tarball's bin/fhirbulk is the dist/cli command"
    else
        fail "$arch: the tarball's bin/fhirbulk differs from the dist/cli command"
    fi
done

# ---- the sandbox and its truth --------------------------------------------------------------
if [ ! -x "$SANDBOX" ]; then
    echo "== cargo build --features sandbox --bin fhirbulk-sandbox"
    cargo build --features sandbox --bin fhirbulk-sandbox
fi
start_sandbox "$SANDBOX" SB --patients 50 --records-per-file 7
TYPES=Patient,Observation,Condition
curl -fsS "$SB/_sandbox/truth?level=group&group=g1&_type=$TYPES&ids=1" >"$WORK/truth.json"
NTRUTH=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/truth.json")
echo "sandbox $SB; truth g1 ($TYPES): $NTRUTH resources"

# check_ids NAME FILE...: the Type/id of every NDJSON line in FILEs, sorted, must equal the truth
# (a lost record or a repeated one both show).
check_ids() {
    local name=$1 verdict
    shift
    verdict=$(python3 - "$WORK/truth.json" "$@" <<'EOF'
import collections, json, sys
want = collections.Counter(json.load(open(sys.argv[1])))
got = collections.Counter()
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                got[f"{r['resourceType']}/{r['id']}"] += 1
if got == want:
    print(f"ok {sum(got.values())}")
else:
    lost = sum((want - got).values())
    extra = sum((got - want).values())
    print(f"bad {sum(got.values())} delivered, {lost} missing, {extra} extra or repeated")
EOF
)
    case $verdict in
        ok*) pass "$name: the ids delivered equal the truth (${verdict#ok } records)" ;;
        *) fail "$name: ${verdict#bad }, want the truth's $NTRUTH" ;;
    esac
}

# ---- Python ---------------------------------------------------------------------------------
PYT=$TOOLS/venv/bin
run "twine check (2 wheels, sdist)" "$PYT/twine" check --strict "$WHEEL_X86" "$WHEEL_ARM" "$SDIST" || true
for whl in "$WHEEL_X86" "$WHEEL_ARM"; do
    tag=${whl##*-py3-none-}
    tag=${tag%.whl}
    shown=$("$PYT/auditwheel" show "$whl" 2>&1 | tr '\n' ' ' | tr -s ' ')
    if grep -q "is consistent with the following platform tag: \"$tag\"" <<<"$shown"; then
        pass "auditwheel show: $(basename "$whl") is consistent with $tag"
    else
        echo "    $shown"
        fail "auditwheel show: $(basename "$whl") is not consistent with $tag"
    fi
done

# A PATH without cargo, rustc or rustup: the wheel must need no Rust at all.
clean_path=
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    [ -n "$d" ] && [ ! -e "$d/cargo" ] && [ ! -e "$d/rustc" ] && [ ! -e "$d/rustup" ] &&
        clean_path+="${clean_path:+:}$d"
done
VENV=$WORK/venv
python3 -m venv "$VENV"
T0=$SECONDS
if run "pip install the x86_64 wheel (fresh virtualenv, no cargo on PATH, binaries only)" \
    env PATH="$VENV/bin:$clean_path" CARGO_HOME="$WORK/no-cargo" RUSTUP_HOME="$WORK/no-rustup" \
    bash -c '! command -v cargo && ! command -v rustc &&
        pip install --only-binary=:all: --disable-pip-version-check "$1"' _ "$WHEEL_X86"; then
    echo "    (installed in $((SECONDS - T0)) s)"
    T0=$SECONDS
    if run "wheel: export (tests/dist/dist_export.py)" env PATH="$VENV/bin:$clean_path" \
        "$VENV/bin/python" tests/dist/dist_export.py "$SB/fhir" g1 "$TYPES" "$WORK/py.ndjson"; then
        echo "    (exported in $((SECONDS - T0)) s)"
        cp "$WORK/step.log" "$WORK/py-export.log"
        check_ids "wheel" "$WORK/py.ndjson"
        run "wheel: the package imported is the virtualenv's" \
            grep -q "package $VENV/lib/python3[.0-9]*/site-packages/fhirbulk\$" "$WORK/py-export.log" || true
    fi
fi

# The sdist: built from source (maturin, cargo) into a wheel, installed, used. Its cargo build
# has a target directory of its own: the crate unpacked from the sdist is another package to
# cargo, whose libfhirbulk.so would otherwise land on target/release/libfhirbulk.so.
SDVENV=$WORK/sdist-venv
python3 -m venv "$SDVENV"
T0=$SECONDS
if run "pip install the sdist (built from source)" env CARGO_TARGET_DIR="$ROOT/target/sdist-build" \
    "$SDVENV/bin/pip" install --disable-pip-version-check "$SDIST"; then
    echo "    (built and installed in $((SECONDS - T0)) s)"
    if run "sdist: export" "$SDVENV/bin/python" tests/dist/dist_export.py "$SB/fhir" g1 "$TYPES" \
        "$WORK/sdist.ndjson"; then
        check_ids "sdist" "$WORK/sdist.ndjson"
    fi
    # packaging/wheel.py lays the package out as maturin does: the same files installed.
    files_of() { (cd "$1"/lib/python3*/site-packages/fhirbulk && find . -type f ! -path '*/__pycache__/*' | sort); }
    if [ -d "$VENV/lib" ] && diff <(files_of "$VENV") <(files_of "$SDVENV") >"$WORK/layout.diff"; then
        pass "the dist wheel installs the same files as maturin's wheel from the sdist"
    else
        sed 's/^/    /' "$WORK/layout.diff"
        fail "the dist wheel installs other files than maturin's wheel from the sdist"
    fi
fi

# ---- Java -----------------------------------------------------------------------------------
jar_list=$(unzip -Z1 "$JAR")
if grep -qx 'linux-x86-64/libfhirbulk.so' <<<"$jar_list" && grep -qx 'linux-aarch64/libfhirbulk.so' <<<"$jar_list" &&
    grep -qx 'org/fhirbulk/Export.class' <<<"$jar_list"; then
    pass "jar: classes, linux-x86-64/libfhirbulk.so and linux-aarch64/libfhirbulk.so"
else
    fail "jar: classes, linux-x86-64/libfhirbulk.so and linux-aarch64/libfhirbulk.so"
fi
# (grep reads captured strings: `unzip | grep -q` can fail with SIGPIPE under pipefail.)
sources_list=$(unzip -Z1 "${JAR%.jar}-sources.jar")
javadoc_list=$(unzip -Z1 "${JAR%.jar}-javadoc.jar")
if grep -qx 'org/fhirbulk/Export.java' <<<"$sources_list" &&
    grep -Eq '(^|/)org/fhirbulk/Export\.html$' <<<"$javadoc_list"; then
    pass "sources and javadoc jars"
else
    fail "sources and javadoc jars (org/fhirbulk/Export.java, org/fhirbulk/Export.html)"
fi
if grep -q '<licenses>' "$POM" && grep -q '<scm>' "$POM" && grep -q '<developers>' "$POM" &&
    grep -q "<version>$VERSION</version>" "$POM"; then
    pass "pom: version, licence, SCM, developers"
else
    fail "pom: version, licence, SCM, developers"
fi

# An empty local repository: the jar is found only because it was installed there, JNA comes
# from the remote repository through the pom's dependencies.
M2=$WORK/m2
MVN=(mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$M2")
if run "mvn install:install-file (jar, pom, sources, javadoc) into an empty local repository" \
    "${MVN[@]}" org.apache.maven.plugins:maven-install-plugin:3.1.2:install-file -Dfile="$JAR" \
    -DpomFile="$POM" -Dsources="${JAR%.jar}-sources.jar" -Djavadoc="${JAR%.jar}-javadoc.jar"; then
    mkdir -p "$WORK/consumer"
    cat >"$WORK/consumer/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>example</groupId>
  <artifactId>consumer</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.fhirbulk</groupId>
      <artifactId>fhirbulk</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    if run "a project with the one dependency org.fhirbulk:fhirbulk:$VERSION resolves its class path" \
        "${MVN[@]}" -f "$WORK/consumer/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath \
        -Dmdep.outputFile="$WORK/consumer/cp.txt" -Dmdep.includeScope=runtime; then
        CP=$(cat "$WORK/consumer/cp.txt")
        echo "    class path: ${CP//$M2/<local repository>}"
        if run "jar: export from that class path alone (tests/dist/DistExport.java)" \
            java -cp "$CP" tests/dist/DistExport.java "$SB/fhir" g1 "$TYPES" "$WORK/java.ndjson"; then
            cp "$WORK/step.log" "$WORK/java-export.log"
            check_ids "jar" "$WORK/java.ndjson"
            # (JNA extracts the jar's linux-x86-64/libfhirbulk.so to a temporary file.)
            run "jar: the library came out of the jar, not out of this checkout" bash -c \
                'grep -q "library /" "$2" && ! grep -q "library $1/" "$2"' _ "$ROOT" "$WORK/java-export.log" || true
        fi
    fi
fi

# ---- C/C++: the x86_64 tarball ----------------------------------------------------------------
UNPACKED=$WORK/unpacked
mkdir -p "$UNPACKED"
tar -xzf "$TAR_X86" -C "$UNPACKED"
PREFIX=$UNPACKED/fhirbulk-$VERSION-linux-x86_64
# The packaging suite against the unpacked prefix (its own sandbox; its own pass/fail lines).
if FHIRBULK_PACKAGING_PREFIX=$PREFIX FHIRBULK_SKIP_CARGO_BUILD=1 bash tests/packaging/run.sh \
    >"$WORK/packaging.log" 2>&1; then
    sed 's/^/    /' "$WORK/packaging.log"
    pass "tarball: tests/packaging/run.sh against the unpacked prefix ($(tail -1 "$WORK/packaging.log"))"
else
    sed 's/^/    /' "$WORK/packaging.log"
    fail "tarball: tests/packaging/run.sh against the unpacked prefix"
fi
if run "tarball: bin/fhirbulk export" timeout 120 "$PREFIX/bin/fhirbulk" export --base-url "$SB/fhir" \
    -g g1 -t "$TYPES" --out "$WORK/cli-x86" -q; then
    check_ids "tarball bin/fhirbulk" "$WORK/cli-x86"/*.ndjson
fi

# ---- aarch64, under qemu-user -------------------------------------------------------------
SYSROOT=/usr/aarch64-linux-gnu
if command -v qemu-aarch64 >/dev/null 2>&1 && [ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ]; then
    export QEMU_LD_PREFIX=$SYSROOT
    run "aarch64: fhirbulk --version under qemu-aarch64" qemu-aarch64 "$CLI_ARM" --version || true
    if run "aarch64: fhirbulk export under qemu-aarch64" timeout 300 qemu-aarch64 "$CLI_ARM" export \
        --base-url "$SB/fhir" -g g1 -t "$TYPES" --out "$WORK/cli-arm" -q; then
        check_ids "aarch64 fhirbulk" "$WORK/cli-arm"/*.ndjson
    fi
else
    fail "aarch64: qemu-aarch64 and $SYSROOT (apt-get install qemu-user libc6-arm64-cross; .ci/run does)"
fi

summary
