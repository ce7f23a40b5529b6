#!/usr/bin/env bash
# make dist: every release artifact, for Linux x86-64 and aarch64 with glibc 2.28 or newer
# (RHEL/Rocky/Alma 8, Debian 10, Ubuntu 18.10 and later), into dist/:
#
#   dist/python/fhirbulk-V-py3-none-manylinux_2_28_x86_64.whl    binary wheels (cffi, ABI mode:
#   dist/python/fhirbulk-V-py3-none-manylinux_2_28_aarch64.whl   one wheel per platform)
#   dist/python/fhirbulk-V.tar.gz                                sdist (builds from source)
#   dist/java/fhirbulk-V.jar          classes + linux-x86-64/ and linux-aarch64/libfhirbulk.so
#   dist/java/fhirbulk-V-sources.jar, fhirbulk-V-javadoc.jar, fhirbulk-V.pom
#   dist/c/fhirbulk-V-linux-x86_64.tar.gz    the installed prefix (lib, include, pkg-config,
#   dist/c/fhirbulk-V-linux-aarch64.tar.gz   CMake package, bin/fhirbulk), relocatable
#   dist/cli/fhirbulk-V-linux-x86_64         the fhirbulk command alone (needs only glibc)
#   dist/cli/fhirbulk-V-linux-aarch64
#   dist/SHA256SUMS
#
# The library and the command are compiled once per platform, with cargo-zigbuild (zig as the
# C compiler and linker, against glibc 2.28's symbol versions), and that one libfhirbulk.so goes
# into the wheel, the jar and the tarball. tests/dist/run.sh (make test-dist) checks them.
#
# Tools, fetched from the package registries into target/dist-tools on first use: ziglang,
# maturin, wheel, twine, auditwheel and cffi (PyPI, in a virtualenv), cargo-zigbuild
# (crates.io), the aarch64 standard library (rustup).
#
# Environment:
#   FHIRBULK_DIST_DIR=dist          where the artifacts go (emptied first)
#   FHIRBULK_DIST_TOOLS=DIR         where the tools go (default target/dist-tools)
#   FHIRBULK_DIST_ARCHS="x86_64 aarch64"
#   FHIRBULK_DIST_SKIP_BUILD=1      package what target/<triple>/release holds, without cargo
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

GLIBC=2.28
ARCHS=(${FHIRBULK_DIST_ARCHS:-x86_64 aarch64})
DIST=$(mkdir -p "${FHIRBULK_DIST_DIR:-dist}" && cd "${FHIRBULK_DIST_DIR:-dist}" && pwd)
TOOLS=$(mkdir -p "${FHIRBULK_DIST_TOOLS:-target/dist-tools}" && cd "${FHIRBULK_DIST_TOOLS:-target/dist-tools}" && pwd)
VERSION=$(sed -n 's/^#define FHIRBULK_VERSION "\(.*\)"$/\1/p' include/fhirbulk.h)
[ -n "$VERSION" ] || { echo "dist.sh: no FHIRBULK_VERSION in include/fhirbulk.h" >&2; exit 1; }
# Reproducible archives: every timestamp is the last commit's.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH

step() { printf '\n== %s\n' "$*"; }

# ---- tools ----------------------------------------------------------------------------------
# Pinned: a new release of any of them changes what make dist produces only when bumped here.
PY_TOOLS=(ziglang==0.13.0 maturin==1.16.0 wheel==0.48.0 twine==7.0.0 auditwheel==6.8.2 cffi==2.1.1)
CARGO_ZIGBUILD=0.24.1

stamp="$TOOLS/venv/.fhirbulk-tools"
if [ ! -x "$TOOLS/venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PY_TOOLS[*]}" ]; then
    step "tools: ${PY_TOOLS[*]} (PyPI) into $TOOLS/venv"
    rm -rf "$TOOLS/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_TOOLS[@]}"
    echo "${PY_TOOLS[*]}" >"$stamp"
fi
if [ "$("$TOOLS/bin/cargo-zigbuild" --version 2>/dev/null)" != "cargo-zigbuild $CARGO_ZIGBUILD" ]; then
    step "tools: cargo-zigbuild $CARGO_ZIGBUILD (crates.io) into $TOOLS/bin"
    cargo install -q --locked --root "$TOOLS" cargo-zigbuild --version "$CARGO_ZIGBUILD"
fi
# cargo-zigbuild runs `python3 -m ziglang`: the virtualenv's python3 first on PATH.
export PATH="$TOOLS/venv/bin:$TOOLS/bin:$PATH"
PY="$TOOLS/venv/bin/python"

TRIPLES=()
for arch in "${ARCHS[@]}"; do
    case $arch in x86_64 | aarch64) ;; *) echo "dist.sh: unknown architecture $arch" >&2; exit 2 ;; esac
    TRIPLES+=("$arch-unknown-linux-gnu")
done
if command -v rustup >/dev/null 2>&1; then
    installed=$(rustup target list --installed)
    for t in "${TRIPLES[@]}"; do
        grep -qx "$t" <<<"$installed" || { step "rustup target add $t"; rustup target add "$t"; }
    done
fi

# ---- compile: the library (cdylib + staticlib) and the command, once per platform ------------
if [ "${FHIRBULK_DIST_SKIP_BUILD:-0}" != 1 ]; then
    targets=()
    for t in "${TRIPLES[@]}"; do targets+=(--target "$t.$GLIBC"); done
    step "cargo zigbuild --release --lib --bin fhirbulk --features cli ${targets[*]}"
    T0=$SECONDS
    cargo zigbuild --release --lib --bin fhirbulk --features cli "${targets[@]}"
    echo "(compiled in $((SECONDS - T0)) s)"
fi

rm -rf "$DIST"/{python,java,c,cli} "$DIST/SHA256SUMS"
mkdir -p "$DIST"/{python,java,c,cli}
for t in "${TRIPLES[@]}"; do
    for f in libfhirbulk.so libfhirbulk.a fhirbulk; do
        [ -f "target/$t/release/$f" ] || { echo "dist.sh: missing target/$t/release/$f" >&2; exit 1; }
    done
done

# ---- Python -----------------------------------------------------------------------------------
for arch in "${ARCHS[@]}"; do
    step "wheel: manylinux_2_28_$arch"
    "$PY" packaging/wheel.py --lib "target/$arch-unknown-linux-gnu/release/libfhirbulk.so" \
        --platform "manylinux_${GLIBC/./_}_$arch" --out "$DIST/python"
done
step "sdist (maturin sdist)"
# (maturin first looks for a Cargo.toml beside pyproject.toml and says so as an "error" before
# it reads manifest-path; that line is dropped.)
(cd bindings/python && maturin sdist -o "$DIST/python" 2>&1) |
    { grep -v '^error: manifest path `Cargo.toml` does not exist$' || true; }
# (grep reads a captured list: `tar | grep -q` can fail with SIGPIPE under pipefail and so miss.)
sdist_files=$(tar -tzf "$DIST/python/fhirbulk-$VERSION.tar.gz")
if grep -q "^fhirbulk-$VERSION/dist/" <<<"$sdist_files"; then
    echo "dist.sh: the sdist holds dist/ (is /dist in .gitignore?)" >&2
    exit 1
fi

# ---- Java -------------------------------------------------------------------------------------
if [[ " ${ARCHS[*]} " == *" x86_64 "* && " ${ARCHS[*]} " == *" aarch64 "* ]]; then
    step "jar: mvn -Pdist package (linux-x86-64 + linux-aarch64)"
    mvn -B -q -f bindings/java/pom.xml -Pdist package -Dmaven.test.skip=true \
        -Dfhirbulk.native.dir="$ROOT/target/x86_64-unknown-linux-gnu/release" \
        -Dfhirbulk.native.dir.aarch64="$ROOT/target/aarch64-unknown-linux-gnu/release"
    for suffix in "" -sources -javadoc; do
        cp "bindings/java/target/dist/fhirbulk-$VERSION$suffix.jar" "$DIST/java/"
    done
    # The project's pom is the one published beside the jar (no parent; JNA its one
    # compile-scope dependency).
    cp bindings/java/pom.xml "$DIST/java/fhirbulk-$VERSION.pom"
else
    echo "(no jar: it needs both x86_64 and aarch64)"
fi

# ---- C/C++ and the command ----------------------------------------------------------------
for arch in "${ARCHS[@]}"; do
    name=fhirbulk-$VERSION-linux-$arch
    step "tarball: $name.tar.gz"
    stage=$(mktemp -d "${TMPDIR:-/tmp}/fhirbulk-dist.XXXXXX")
    # PREFIX only names the directory inside the archive: the CMake package computes its paths
    # and fhirbulk.pc is relative to itself, so the prefix can be unpacked anywhere.
    DESTDIR=$stage FHIRBULK_BUILD_DIR="target/$arch-unknown-linux-gnu/release" FHIRBULK_RELOCATABLE=1 \
        bash packaging/install.sh "/$name" >/dev/null
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$stage" -czf "$DIST/c/$name.tar.gz" "$name"
    rm -rf "$stage"
    install -m 755 "target/$arch-unknown-linux-gnu/release/fhirbulk" "$DIST/cli/$name"
done

(cd "$DIST" && find python java c cli -type f | sort | xargs sha256sum >SHA256SUMS)
step "dist: $DIST"
(cd "$DIST" && find . -type f | sort | xargs ls -l | awk '{ printf "  %10d  %s\n", $5, $9 }')
