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

// The record path: `export` (start, pull) -> `stream` (records) <- `download` (lines of a file)
// <- `remote` (its bytes across responses) <- `http` (the one place a request goes out).
// The protocol: `kickoff`, `status` (polling, pages, links fetched again), `coordinator` (runs
// them and queues files), `files` (the files by identity, their delivery progress). `engine`:
// the threads every export of the process shares (control steps, waits, downloads).
#[cfg(feature = "arrow")]
pub mod arrow;
mod attachments;
pub mod auth;
mod bom;
mod buffers;
pub mod checkpoint;
pub mod config;
mod coordinator;
mod document;
mod download;
pub mod engine;
pub mod error;
pub mod events;
pub mod export;
pub mod ffi;
mod files;
mod http;
#[doc(hidden)]
pub mod id;
mod instant;
pub mod kickoff;
pub mod manifest;
mod monitor;
pub mod ndjson;
mod remote;
#[cfg(feature = "sandbox")]
pub mod sandbox;
mod secret;
mod status;
mod stream;

pub use config::{AttachmentMode, Auth, Config, Level, Method, ParamValues, SecretSource};
pub use error::{Error, ErrorCode, Issue};
pub use events::Event;
pub use export::{Controller, Export, Progress};
pub use files::FileInfo;
pub use manifest::Kind;
pub use monitor::{State, Wait};
pub use stream::{Batch, Next, Record};
