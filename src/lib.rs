//! fhirbulk: an embeddable FHIR Bulk Data Access (`$export`) client.
//!
//! The Rust API: build a [`Config`], [`Export::start`] it, then pull records with
//! [`Export::next_record`] or [`Export::next_batch`] while [`Export::controller`] gives progress
//! and cancel to other threads. The C ABI in [`ffi`] is a thin layer over the same engine.
//!
//! ```no_run
//! use fhirbulk::{Config, Export, Next};
//! let mut cfg = Config::new("http://127.0.0.1:8080/fhir");
//! cfg.types = vec!["Patient".into()];
//! let mut export = Export::start(cfg)?;
//! while let Next::Item(rec) = export.next_record(None)? {
//!     println!("{} line {}: {} bytes", rec.resource_type, rec.line, rec.data.len());
//! }
//! # Ok::<(), fhirbulk::Error>(())
//! ```

pub mod auth;
pub mod checkpoint;
pub mod config;
mod decode;
mod download;
pub mod error;
pub mod export;
pub mod ffi;
mod files;
mod http;
#[doc(hidden)]
pub mod id;
pub mod manifest;
pub mod ndjson;
mod remote;
mod retry;
#[cfg(feature = "sandbox")]
pub mod sandbox;

pub use config::{Auth, Config, Level, Method, SecretSource};
pub use error::{Error, ErrorCode, Issue};
pub use export::{Batch, Controller, Export, FileInfo, Next, Progress, Record, State, Wait};
pub use manifest::Kind;
