//! Random identifiers: a JWT's `jti`, the sandbox's tokens and signatures, the CLI's `exportId`.
//! One helper for the crate, the sandbox and the command line (they import it from here).

/// `bytes` random bytes from the OS generator, as lowercase hex (`2 * bytes` characters).
///
/// `getrandom` fails only where the OS has no entropy source at all; the identifiers made here
/// must be unique, not secret, so the fallback is the clock mixed with a process-wide counter.
pub fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    let mut b = vec![0u8; bytes];
    if getrandom::getrandom(&mut b).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            ^ (u128::from(n) << 64);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    b.iter().fold(String::with_capacity(bytes * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_of_the_length_asked_and_different_each_time() {
        let a = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, super::random_hex(16));
    }
}
