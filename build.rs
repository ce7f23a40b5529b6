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
        let soname = format!("libfhirbulk.so.{major}");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
        soname_link(&soname);
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
    let part = |k: &str| {
        std::env::var(k)
            .expect("cargo sets it")
            .parse::<u32>()
            .expect("a number")
    };
    let (major, minor, patch) = (
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
    );
    let after = config.after_includes.as_deref().unwrap_or("");
    for line in [
        format!("#define FHIRBULK_VERSION_MAJOR {major}\n"),
        format!("#define FHIRBULK_VERSION_MINOR {minor}\n"),
        format!("#define FHIRBULK_VERSION_PATCH {patch}\n"),
        format!(
            "#define FHIRBULK_VERSION_NUM {}\n",
            major * 10000 + minor * 100 + patch
        ),
    ] {
        assert!(
            after.contains(&line),
            "cbindgen.toml must say {} for the crate version {version}",
            line.trim()
        );
    }
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

/// Programs linked in the tree (`-Ltarget/debug -lfhirbulk`: tests/c, `make demo`) record the
/// soname and look for it beside `libfhirbulk.so` at run time: put a symlink there, in the
/// profile directory (`OUT_DIR` is `target/[TRIPLE/]PROFILE/build/fhirbulk-HASH/out`).
#[cfg(unix)]
fn soname_link(soname: &str) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    if out.ancestors().nth(2).and_then(|p| p.file_name()) != Some("build".as_ref()) {
        return;
    }
    let link = profile_dir.join(soname);
    if std::fs::read_link(&link).ok().as_deref() != Some("libfhirbulk.so".as_ref()) {
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink("libfhirbulk.so", &link) {
            println!("cargo:warning=could not link {}: {e}", link.display());
        }
    }
}

#[cfg(not(unix))]
fn soname_link(_soname: &str) {}
