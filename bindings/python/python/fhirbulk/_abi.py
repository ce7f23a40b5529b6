"""Loads the bundled native library and checks that it speaks the ABI this package was written for."""

from __future__ import annotations

#: The C ABI version this Python code was written against (``FHIRBULK_ABI_VERSION``).
ABI_VERSION = 3


def check_abi(library_abi: int, header_abi: int, expected: int = ABI_VERSION) -> None:
    """Raise ImportError unless the library, the header it was bound with and this code agree."""
    if not (library_abi == header_abi == expected):
        raise ImportError(
            "fhirbulk: ABI version mismatch: the bundled libfhirbulk reports "
            f"fhirbulk_abi_version() = {library_abi}, its header FHIRBULK_ABI_VERSION = "
            f"{header_abi}, and this Python package needs {expected}; "
            "reinstall the package (pip install --force-reinstall fhirbulk)"
        )


try:
    from ._native import ffi, lib  # maturin's cffi module (or packaging/wheel.py's), libfhirbulk inside
except (ImportError, OSError) as _e:  # pragma: no cover - only on a broken install
    raise ImportError(f"fhirbulk: cannot load the bundled native library: {_e}") from _e

check_abi(int(lib.fhirbulk_abi_version()), int(lib.FHIRBULK_ABI_VERSION))

__all__ = ["ABI_VERSION", "check_abi", "ffi", "lib"]
