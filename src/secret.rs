//! Secrets (tokens, client secrets, private keys) as a type that never prints its content and
//! is wiped from memory when dropped.

use zeroize::Zeroize;

/// A string that must not be printed: `Debug` shows `***`, there is no `Display`. Its bytes are
/// overwritten with zeros when it is dropped (`zeroize`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The `Drop` above wipes it.
impl zeroize::ZeroizeOnDrop for Secret {}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}

    #[test]
    fn a_secret_is_wiped_when_dropped_and_never_printed() {
        wiped_on_drop::<Secret>();
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }
}
