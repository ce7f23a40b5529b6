//! Generates `include/fhirbulk.h` from `src/ffi` with cbindgen. The header is committed; CI
//! rebuilds and fails when the committed file differs from what this writes.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // The shared library's soname carries the major version (libfhirbulk.so.0 for 0.x), so an
    // installed lib/libfhirbulk.so.0.1.0 is found through its libfhirbulk.so.0 symlink
    // (packaging/install.sh). Bindings that dlopen target/release/libfhirbulk.so by path do
    // not care.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets it");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libfhirbulk.so.{major}");
    }
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets it");
    assert!(
        config
            .after_includes
            .as_deref()
            .unwrap_or("")
            .contains(&format!("FHIRBULK_VERSION \"{version}\"")),
        "cbindgen.toml's FHIRBULK_VERSION must equal the crate version {version}"
    );
    let bindings = match cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi/mod.rs"))
        .generate()
    {
        Ok(b) => b,
        Err(e) => panic!("cbindgen failed: {e}"),
    };
    let path = dir.join("include/fhirbulk.h");
    let mut out = Vec::new();
    bindings.write(&mut out);
    // Write only on change, so an unchanged header keeps its mtime.
    if std::fs::read(&path).ok().as_deref() != Some(&out[..]) {
        std::fs::create_dir_all(dir.join("include")).expect("create include/");
        std::fs::write(&path, out).expect("write include/fhirbulk.h");
    }
}
