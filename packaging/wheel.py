"""Package an already built libfhirbulk.so as a binary wheel of the Python binding.

    python packaging/wheel.py --lib target/x86_64-unknown-linux-gnu/release/libfhirbulk.so \
        --platform manylinux_2_28_x86_64 --out dist

make dist (packaging/dist.sh) builds the library once per platform with cargo-zigbuild (glibc
2.28) and hands the same file to the wheel, the jar and the tarball.  ``pip install
./bindings/python`` builds through maturin instead, which compiles the crate itself and cannot
take a library built elsewhere; so this script lays out the wheel the way maturin's ``cffi``
bindings do and lets the libraries do the rest:

- the package's Python sources (bindings/python/python/fhirbulk);
- ``fhirbulk/_native/``: ``ffi.py`` from cffi's recompiler (the out-of-line ABI-mode module, as
  maturin generates it) over the cffi-clean copy of include/fhirbulk.h that the build backend
  makes; ``__init__.py`` loading ``lib_native.so`` next to it; ``lib_native.so`` itself (the
  names maturin 1.16 gives them);
- the ``.dist-info`` metadata from maturin's own PEP 517 hook (from pyproject.toml and
  Cargo.toml; no compilation), with the ``WHEEL`` file's tag set to the platform given;
- the archive, its RECORD and its file name from ``wheel pack`` (the ``wheel`` package).

The binding calls the library through cffi in ABI mode, so it does not depend on the Python
version or ABI: the tag is ``py3-none-<platform>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYDIR = os.path.join(ROOT, "bindings", "python")
# The binding's build backend: cffi_clean_header and maturin's metadata hook.
sys.path.insert(0, os.path.join(PYDIR, "build_backend"))
import fhirbulk_build_backend as backend  # noqa: E402

# What maturin 1.16 writes for `bindings = "cffi"` (the module's __init__.py), unchanged.
NATIVE_INIT = """__all__ = ["lib", "ffi"]

import os
from .ffi import ffi

lib = ffi.dlopen(os.path.join(os.path.dirname(__file__), 'lib_native.so'))
del os
"""


def ffi_module(header_text: str, dest: str) -> None:
    """Write cffi's out-of-line ABI-mode module for the declarations to ``dest``."""
    import cffi
    from cffi import recompiler

    ffi = cffi.FFI()
    ffi.cdef(header_text)
    recompiler.make_py_source(ffi, "ffi", dest)


def dist_info(staging: str) -> str:
    """maturin's metadata for the package, written into ``staging``; its directory name."""
    cwd = os.getcwd()
    os.chdir(PYDIR)
    try:
        return backend.prepare_metadata_for_build_wheel(staging)
    finally:
        os.chdir(cwd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True, help="the libfhirbulk.so to bundle")
    ap.add_argument("--platform", required=True, help="the platform tag, e.g. manylinux_2_28_x86_64")
    ap.add_argument("--out", required=True, help="directory to write the wheel into")
    args = ap.parse_args()

    if not os.path.isfile(args.lib):
        print(f"wheel.py: no library at {args.lib}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fhirbulk-wheel.") as tmp:
        staging = os.path.join(tmp, "staging")
        shutil.copytree(
            os.path.join(PYDIR, "python", "fhirbulk"),
            os.path.join(staging, "fhirbulk"),
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_native"),
        )
        native = os.path.join(staging, "fhirbulk", "_native")
        os.makedirs(native)
        with open(os.path.join(ROOT, "include", "fhirbulk.h"), encoding="utf-8") as f:
            ffi_module(backend.cffi_clean_header(f.read()), os.path.join(native, "ffi.py"))
        with open(os.path.join(native, "__init__.py"), "w", encoding="utf-8") as f:
            f.write(NATIVE_INIT)
        shutil.copyfile(args.lib, os.path.join(native, "lib_native.so"))
        os.chmod(os.path.join(native, "lib_native.so"), 0o755)

        info = dist_info(staging)
        with open(os.path.join(staging, info, "WHEEL"), "w", encoding="utf-8") as f:
            f.write(
                "Wheel-Version: 1.0\n"
                "Generator: fhirbulk packaging/wheel.py\n"
                "Root-Is-Purelib: false\n"
                f"Tag: py3-none-{args.platform}\n"
            )
        os.makedirs(args.out, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "wheel", "pack", staging, "--dest-dir", args.out], check=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
