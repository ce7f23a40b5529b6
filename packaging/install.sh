#!/usr/bin/env bash
# Install libfhirbulk for C and C++ programs under a prefix:
#
#   packaging/install.sh PREFIX        (or: make install PREFIX=/usr/local)
#
#   PREFIX/lib/libfhirbulk.so.X.Y.Z     shared library, soname libfhirbulk.so.X
#   PREFIX/lib/libfhirbulk.so.X  ->  libfhirbulk.so.X.Y.Z
#   PREFIX/lib/libfhirbulk.so    ->  libfhirbulk.so.X
#   PREFIX/lib/libfhirbulk.a            static library
#   PREFIX/include/fhirbulk.h           the C API
#   PREFIX/include/fhirbulk.hpp         the header-only C++17 wrapper
#   PREFIX/lib/pkgconfig/fhirbulk.pc    pkg-config (Libs.private: what libfhirbulk.a needs)
#   PREFIX/lib/cmake/fhirbulk/          find_package(fhirbulk): fhirbulk::fhirbulk (shared),
#                                       fhirbulk::fhirbulk_static; relocatable
#   PREFIX/bin/fhirbulk                 the command line (export, resume, cancel; no test server)
#
# Builds the release library first (`cargo build --release --lib --features parquet`, the same build the Java
# binding bundles), then the command (`cargo build --release --bin fhirbulk --features cli`).
# Environment:
#   DESTDIR=/stage                 stage the files under /stage/PREFIX (for packagers); the
#                                  installed files still name PREFIX
#   FHIRBULK_SKIP_CARGO_BUILD=1    install what is built as it is
#   FHIRBULK_BUILD_DIR=DIR         take the library and the command from DIR instead of
#                                  target/release (make dist: target/<triple>/release; implies
#                                  FHIRBULK_SKIP_CARGO_BUILD=1)
#   FHIRBULK_RELOCATABLE=1         write fhirbulk.pc with prefix=${pcfiledir}/../.. (a prefix that
#                                  can be moved, as in make dist's tarball) instead of PREFIX
#   CARGO=cargo                    the cargo to run
set -euo pipefail

usage() { echo "usage: $0 PREFIX   (an absolute path; DESTDIR= stages the files)" >&2; exit 2; }
[ $# -eq 1 ] || usage
PREFIX=$1
case $PREFIX in /*) ;; *) echo "PREFIX must be an absolute path: $PREFIX" >&2; usage ;; esac
PREFIX=${PREFIX%/}
DEST=${DESTDIR:-}$PREFIX

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

BUILD_DIR=${FHIRBULK_BUILD_DIR:-}
if [ -z "$BUILD_DIR" ] && [ "${FHIRBULK_SKIP_CARGO_BUILD:-0}" != 1 ]; then
    echo "+ ${CARGO:-cargo} build --release --lib --features parquet"
    "${CARGO:-cargo}" build --release --lib --features parquet
    echo "+ ${CARGO:-cargo} build --release --bin fhirbulk --features cli"
    "${CARGO:-cargo}" build --release --bin fhirbulk --features cli
fi

# The version is the crate's; build.rs asserts the header says the same.
VERSION=$(sed -n 's/^#define FHIRBULK_VERSION "\(.*\)"$/\1/p' include/fhirbulk.h)
[[ $VERSION =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] ||
    { echo "no FHIRBULK_VERSION in include/fhirbulk.h" >&2; exit 1; }
MAJOR=${BASH_REMATCH[1]}
SONAME=libfhirbulk.so.$MAJOR
REAL=libfhirbulk.so.$VERSION

BUILD_DIR=${BUILD_DIR:-target/release}
SO=$BUILD_DIR/libfhirbulk.so
A=$BUILD_DIR/libfhirbulk.a
BIN=$BUILD_DIR/fhirbulk
for f in "$SO" "$A" include/fhirbulk.h include/fhirbulk.hpp; do
    [ -f "$f" ] || { echo "missing $f (cargo build --release --lib --features parquet)" >&2; exit 1; }
done
[ -f "$BIN" ] || { echo "missing $BIN (cargo build --release --bin fhirbulk --features cli)" >&2; exit 1; }
# build.rs links the soname in; an older build would install a library ld.so cannot find.
if command -v readelf >/dev/null 2>&1 &&
    ! grep -q "(SONAME).*\[$SONAME\]" <<<"$(readelf -d "$SO")"; then
    echo "$SO has no soname $SONAME (rebuild: cargo build --release --lib --features parquet)" >&2
    exit 1
fi

# What libfhirbulk.a needs besides libc, from
#   cargo rustc --release --lib --crate-type staticlib -- --print native-static-libs
# (Linux, glibc: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc).
STATIC_LIBS="-lpthread -ldl -lm -lrt -lutil -lgcc_s"
STATIC_LIBS_CMAKE=$(echo "$STATIC_LIBS" | sed 's/-l//g; s/ /;/g')   # pthread;dl;m;...

echo "installing fhirbulk $VERSION into ${DESTDIR:+$DESTDIR}$PREFIX"
install -d "$DEST/lib/pkgconfig" "$DEST/lib/cmake/fhirbulk" "$DEST/include" "$DEST/bin"
install -m 755 "$BIN" "$DEST/bin/fhirbulk"
install -m 755 "$SO" "$DEST/lib/$REAL"
ln -sfn "$REAL" "$DEST/lib/$SONAME"
ln -sfn "$SONAME" "$DEST/lib/libfhirbulk.so"
install -m 644 "$A" "$DEST/lib/libfhirbulk.a"
install -m 644 include/fhirbulk.h include/fhirbulk.hpp "$DEST/include/"

PC_PREFIX=$PREFIX
if [ "${FHIRBULK_RELOCATABLE:-0}" = 1 ]; then PC_PREFIX='${pcfiledir}/../..'; fi

subst() {
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@PC_PREFIX@|$PC_PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@MAJOR@|$MAJOR|g" \
        -e "s|@SONAME@|$SONAME|g" -e "s|@REAL@|$REAL|g" -e "s|@STATIC_LIBS@|$STATIC_LIBS|g" \
        -e "s|@STATIC_LIBS_CMAKE@|$STATIC_LIBS_CMAKE|g" \
        "$1" >"$2"
    chmod 644 "$2"
}
subst packaging/fhirbulk.pc.in "$DEST/lib/pkgconfig/fhirbulk.pc"
subst packaging/fhirbulk-config.cmake.in "$DEST/lib/cmake/fhirbulk/fhirbulk-config.cmake"
subst packaging/fhirbulk-config-version.cmake.in \
    "$DEST/lib/cmake/fhirbulk/fhirbulk-config-version.cmake"

for f in bin/fhirbulk lib/$REAL lib/$SONAME lib/libfhirbulk.so lib/libfhirbulk.a include/fhirbulk.h \
    include/fhirbulk.hpp lib/pkgconfig/fhirbulk.pc lib/cmake/fhirbulk/fhirbulk-config.cmake \
    lib/cmake/fhirbulk/fhirbulk-config-version.cmake; do
    echo "  $PREFIX/$f$([ -L "$DEST/$f" ] && echo " -> $(readlink "$DEST/$f")")"
done
