//! Byte order marks at the start of text from outside: the UTF-8 one is skipped (some Windows
//! servers and tools write it), UTF-16 and UTF-32 ones are named in the error they cause.

/// The UTF-8 byte order mark.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `body` without a leading UTF-8 byte order mark.
pub(crate) fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(BOM).unwrap_or(body)
}

/// Why a JSON body that does not parse may have failed: a UTF-16 or UTF-32 byte order mark.
pub(crate) fn bom_hint(body: &[u8]) -> &'static str {
    if body.starts_with(b"\xFF\xFE\0\0") || body.starts_with(b"\0\0\xFE\xFF") {
        " (it starts with a UTF-32 byte order mark; JSON must be UTF-8)"
    } else if is_utf16(body) {
        " (it starts with a UTF-16 byte order mark; JSON must be UTF-8)"
    } else {
        ""
    }
}

/// Text that starts with a UTF-16 byte order mark (either byte order).
pub(crate) fn is_utf16(body: &[u8]) -> bool {
    body.starts_with(b"\xFF\xFE") || body.starts_with(b"\xFE\xFF")
}
