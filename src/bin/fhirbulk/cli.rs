//! Command-line arguments.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  the export completed (or the command succeeded)
  1  any other failure (local I/O such as a full disk, an internal error)
  2  usage or configuration error (bad flag, bad --config, output directory in use)
  3  authorization failed (token endpoint, HTTP 401/403)
  4  the server answered an HTTP error (400, 404/410, 406, 415, 422, 429, 5xx)
  5  network failure (connect, DNS, TLS, timeout, broken transfer)
  6  protocol error or bad data (malformed manifest, wrong content type, bad NDJSON)
  7  cancelled or interrupted (Ctrl-C: run the same command again to resume)";

#[derive(Parser, Debug)]
#[command(
    name = "fhirbulk",
    version,
    about = "FHIR Bulk Data ($export) client",
    long_about = "FHIR Bulk Data ($export) client: exports to a directory of NDJSON files, \
resumes after a crash or Ctrl-C, keeps the last transactionTime for incremental exports.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an export into a directory (or resume the unfinished one there).
    #[command(after_help = EXIT_CODES_HELP)]
    Export(Box<ExportArgs>),
    /// Cancel the unfinished export in a directory: DELETE its server job.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel(Box<CancelArgs>),
    /// Run the sandbox Bulk Data server on 127.0.0.1 until Ctrl-C.
    #[cfg(feature = "sandbox")]
    Sandbox(Box<SandboxArgs>),
}

/// What `--out` gets: the NDJSON files, a Parquet dataset, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// One NDJSON file per manifest file (`<Type>.<nnn>.ndjson`)
    Ndjson,
    /// A Parquet dataset, `<Type>/part-<n>.parquet` (error and deleted records stay NDJSON)
    Parquet,
    /// Both
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ParquetCompressionArg {
    Snappy,
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    Auto,
    Get,
    Post,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AttachmentsArg {
    None,
    Inline,
    Save,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InvalidLineArg {
    Fail,
    Skip,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AlgArg {
    #[value(name = "RS384")]
    Rs384,
    #[value(name = "ES384")]
    Es384,
}

/// Authorization flags. Secrets come only from files or environment variables.
#[derive(Args, Debug, Default, Clone)]
pub struct AuthArgs {
    /// SMART Backend Services client id (client_credentials)
    #[arg(long, value_name = "ID", help_heading = "Authorization")]
    pub client_id: Option<String>,
    /// Private key (PEM or JWK/JWKS) for the client assertion, read from this file
    #[arg(long, value_name = "PATH", help_heading = "Authorization")]
    pub private_key_file: Option<String>,
    /// Private key (PEM or JWK/JWKS) from this environment variable
    #[arg(long, value_name = "VAR", help_heading = "Authorization")]
    pub private_key_env: Option<String>,
    /// Client secret (client_secret_basic) read from this file
    #[arg(long, value_name = "PATH", help_heading = "Authorization")]
    pub client_secret_file: Option<String>,
    /// Client secret (client_secret_basic) from this environment variable
    #[arg(long, value_name = "VAR", help_heading = "Authorization")]
    pub client_secret_env: Option<String>,
    /// Key id registered with the server (default: the JWK's kid)
    #[arg(long, value_name = "KID", help_heading = "Authorization")]
    pub kid: Option<String>,
    /// Signing algorithm (default: from the key)
    #[arg(long, value_enum, help_heading = "Authorization")]
    pub alg: Option<AlgArg>,
    /// URL of your JWKS, sent as the assertion's jku header
    #[arg(long, value_name = "URL", help_heading = "Authorization")]
    pub jku: Option<String>,
    /// OAuth scope (default system/*.read, or the server's v2 system/*.rs)
    #[arg(long, value_name = "SCOPE", help_heading = "Authorization")]
    pub scope: Option<String>,
    /// Token endpoint (default: discovered from .well-known/smart-configuration or metadata)
    #[arg(long, value_name = "URL", help_heading = "Authorization")]
    pub token_url: Option<String>,
    /// A static bearer token from this environment variable
    #[arg(long, value_name = "VAR", help_heading = "Authorization")]
    pub bearer_token_env: Option<String>,
    /// A static bearer token read from this file
    #[arg(long, value_name = "PATH", help_heading = "Authorization")]
    pub bearer_token_file: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").args(["group", "patient_level", "system"])))]
pub struct ExportArgs {
    /// Output directory
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// A JSON config file (the engine's config keys); flags override it
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// FHIR base URL (service root)
    #[arg(long, short = 'u', value_name = "URL", alias = "fhir-url")]
    pub base_url: Option<String>,

    /// Group-level export of this Group id
    #[arg(long, short = 'g', value_name = "ID", help_heading = "Request")]
    pub group: Option<String>,
    /// Patient-level export ([base]/Patient/$export)
    #[arg(long, help_heading = "Request")]
    pub patient_level: bool,
    /// System-level export ([base]/$export; the default)
    #[arg(long, help_heading = "Request")]
    pub system: bool,
    /// Resource types (_type); repeat or separate with commas
    #[arg(
        long = "type",
        short = 't',
        value_name = "TYPE",
        value_delimiter = ',',
        help_heading = "Request"
    )]
    pub types: Vec<String>,
    /// _since: a FHIR instant, or `auto` for the last complete export's transactionTime
    #[arg(long, value_name = "INSTANT|auto", help_heading = "Request")]
    pub since: Option<String>,
    /// _until (v3): a FHIR instant
    #[arg(long, value_name = "INSTANT", help_heading = "Request")]
    pub until: Option<String>,
    /// _typeFilter query such as "Observation?status=final" (repeatable)
    #[arg(long, value_name = "QUERY", help_heading = "Request")]
    pub type_filter: Vec<String>,
    /// _elements; repeat or separate with commas
    #[arg(
        long,
        value_name = "ELEMENT",
        value_delimiter = ',',
        help_heading = "Request"
    )]
    pub elements: Vec<String>,
    /// includeAssociatedData values; repeat or separate with commas
    #[arg(
        long,
        value_name = "VALUE",
        value_delimiter = ',',
        help_heading = "Request"
    )]
    pub include_associated_data: Vec<String>,
    /// organizeOutputBy (v3), e.g. Patient
    #[arg(long, value_name = "TYPE", help_heading = "Request")]
    pub organize_output_by: Option<String>,
    /// _outputFormat
    #[arg(long, value_name = "MIME", help_heading = "Request")]
    pub output_format: Option<String>,
    /// allowPartialManifests (v3)
    #[arg(long, help_heading = "Request")]
    pub allow_partial_manifests: bool,
    /// patient references (forces POST); repeat or separate with commas
    #[arg(
        long,
        value_name = "REF",
        value_delimiter = ',',
        help_heading = "Request"
    )]
    pub patient: Vec<String>,
    /// Kick-off method (auto: GET, or POST with --patient) [default: auto]
    #[arg(long, value_enum, help_heading = "Request")]
    pub method: Option<MethodArg>,
    /// Send Prefer: handling=lenient
    #[arg(long, help_heading = "Request")]
    pub lenient: bool,
    /// Ask for v3 separate-export-status
    #[arg(long, help_heading = "Request")]
    pub separate_export_status: bool,
    /// Extra kick-off parameter the engine does not know (a vendor's), "name=value", sent as
    /// given in the GET query or the POST Parameters (repeatable; a name repeated sends each value)
    #[arg(long, value_name = "NAME=VALUE", help_heading = "Request")]
    pub param: Vec<String>,
    /// Extra header for the FHIR server, "Name: value" (repeatable; not for credentials)
    #[arg(long, value_name = "HEADER", help_heading = "Request")]
    pub header: Vec<String>,

    #[command(flatten)]
    pub auth: AuthArgs,
    /// Another origin allowed to receive the access token for file downloads (repeatable)
    #[arg(long, value_name = "ORIGIN", help_heading = "Authorization")]
    pub token_origin: Vec<String>,
    /// PEM file of extra trusted CA certificates
    #[arg(long, value_name = "PATH", help_heading = "Authorization")]
    pub ca_bundle: Option<String>,
    /// PEM file with a client certificate chain and key (mutual TLS)
    #[arg(long, value_name = "PATH", help_heading = "Authorization")]
    pub client_cert: Option<String>,
    /// Allow plain http:// to a host that is not loopback, and redirects from https to http
    /// (refused by default: the token and patient data would travel in clear)
    #[arg(long, help_heading = "Authorization")]
    pub allow_insecure_http: bool,

    /// Files downloaded at once (1-64) [default: 4]
    #[arg(long, value_name = "N", help_heading = "Tuning")]
    pub concurrency: Option<u64>,
    #[arg(long, value_name = "N", help_heading = "Tuning", hide = true)]
    pub buffer_chunks: Option<u64>,
    #[arg(long, value_name = "BYTES", help_heading = "Tuning", hide = true)]
    pub chunk_bytes: Option<u64>,
    /// A longer NDJSON line is invalid (--on-invalid-line) [default: 67108864]
    #[arg(long, value_name = "BYTES", help_heading = "Tuning")]
    pub max_line_bytes: Option<u64>,
    /// TCP and TLS connect timeout [default: 10000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of kick-off, status and DELETE requests [default: 60000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub request_timeout_ms: Option<u64>,
    /// A file download that receives nothing for this long is resumed [default: 120000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub read_timeout_ms: Option<u64>,
    /// A download slower than this over --stall-window-ms is resumed (0: off) [default: 1024]
    #[arg(long, value_name = "BYTES", help_heading = "Tuning")]
    pub min_bytes_per_s: Option<u64>,
    /// The window of --min-bytes-per-s [default: 60000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub stall_window_ms: Option<u64>,
    /// Shortest wait between status polls [default: 1000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub poll_min_ms: Option<u64>,
    /// Longest wait between status polls; a longer Retry-After is cut to it [default: 600000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub poll_max_ms: Option<u64>,
    /// Cap of the polls' backoff when the server sends no Retry-After [default: 30000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub poll_backoff_max_ms: Option<u64>,
    /// Attempts per request (the first included) after retryable failures [default: 6]
    #[arg(long, value_name = "N", help_heading = "Tuning")]
    pub retry_max_attempts: Option<u64>,
    /// Total wait between one request's attempts [default: 600000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub retry_max_wait_ms: Option<u64>,
    /// First backoff step when the server sends no Retry-After (doubles) [default: 500]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub retry_backoff_min_ms: Option<u64>,
    /// Cap of the backoff between attempts [default: 30000]
    #[arg(long, value_name = "MS", help_heading = "Tuning")]
    pub retry_backoff_max_ms: Option<u64>,
    /// What to do with an invalid NDJSON line [default: fail]
    #[arg(long, value_enum, help_heading = "Tuning")]
    pub on_invalid_line: Option<InvalidLineArg>,
    /// Parse every line fully instead of a shape check
    #[arg(long, help_heading = "Tuning")]
    pub validate_json: bool,
    /// DELETE the server job after a completed export
    #[arg(long, help_heading = "Tuning")]
    pub delete_on_complete: bool,

    /// Fetch the documents DocumentReference/DiagnosticReport attachments link: into the
    /// records as base64 data (inline), or as files under DIR/attachments/ with the records'
    /// url rewritten to them (save) [default: none]
    #[arg(long, value_enum, help_heading = "Attachments")]
    pub attachments: Option<AttachmentsArg>,
    /// Resource types whose attachments are fetched [default: DocumentReference,DiagnosticReport]
    #[arg(
        long,
        value_name = "TYPE[,TYPE...]",
        value_delimiter = ',',
        help_heading = "Attachments"
    )]
    pub attachment_types: Vec<String>,
    /// Only attachments of these content types (text/* allowed) [default: all]
    #[arg(
        long,
        value_name = "MIME[,MIME...]",
        value_delimiter = ',',
        help_heading = "Attachments"
    )]
    pub attachment_content_types: Vec<String>,
    /// A larger document is not fetched (its attachment is reported in
    /// error/fhirbulk-attachments.ndjson) [default: 16777216]
    #[arg(long, value_name = "BYTES", help_heading = "Attachments")]
    pub attachment_max_bytes: Option<u64>,

    /// Write gzip-compressed files (.ndjson.gz)
    #[arg(long, help_heading = "Output")]
    pub gzip: bool,
    /// The output resources as NDJSON files, as a Parquet dataset of typed tables
    /// (`<Type>/part-<n>.parquet`, one table per resource type), or both
    #[arg(long, value_enum, default_value = "ndjson", help_heading = "Output")]
    pub format: FormatArg,
    /// Compression of the Parquet column chunks
    #[arg(long, value_enum, default_value = "snappy", help_heading = "Output")]
    pub parquet_compression: ParquetCompressionArg,
    /// Overwrite the results of an earlier export in --out
    #[arg(long, help_heading = "Output")]
    pub force: bool,
    /// Permissions of the files written (octal; group access e.g. 640); the directories
    /// fhirbulk creates get the execute bits where read is granted (600: 700, 640: 750)
    #[arg(
        long,
        value_name = "MODE",
        default_value = "600",
        value_parser = crate::util::Perms::parse,
        help_heading = "Output"
    )]
    pub file_mode: crate::util::Perms,
    /// State file for --since auto [default: $XDG_STATE_HOME/fhirbulk/state.json]
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub state_file: Option<PathBuf>,
    /// Checkpoint at least this often [default: 1000; with --format parquet or both 60000:
    /// each checkpoint closes the Parquet parts being written]
    #[arg(long, value_name = "MS", help_heading = "Output")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Checkpoint at least every N records [default: 100000; with --format parquet or both
    /// 1000000]
    #[arg(long, value_name = "N", help_heading = "Output")]
    pub checkpoint_records: Option<u64>,
    /// Print a JSON summary on stdout at the end
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// No progress display or log lines on stderr (errors are still printed)
    #[arg(long, short = 'q', help_heading = "Output")]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The output directory of the unfinished export
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// A JSON config file with the credentials (when they were given inline at export time)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Print a JSON result on stdout
    #[arg(long)]
    pub json: bool,
    /// No messages on stderr (errors are still printed)
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[cfg(feature = "sandbox")]
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// TCP port on 127.0.0.1 (0: any free port)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Synthetic patients
    #[arg(long, default_value_t = 50)]
    pub patients: usize,
    /// Resources per output file
    #[arg(long, default_value_t = 1000)]
    pub records_per_file: usize,
    /// Keep rendered output files in memory, so repeated exports are served at wire speed
    #[arg(long)]
    pub prerender: bool,
    /// Server behaviours, e.g. "polls=3;gzip;slow=100" (printed as a scenario base URL)
    #[arg(long, value_name = "K=V;...")]
    pub scenario: Option<String>,
    /// Worker threads
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Register a SMART client (the next --jwks / --client-secret-* belong to it)
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// The client's public JWKS (or one public JWK)
    #[arg(long, value_name = "PATH")]
    pub jwks: Option<PathBuf>,
    /// The client's secret (client_secret_basic), read from this file
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
    /// The client's secret from this environment variable
    #[arg(long, value_name = "VAR")]
    pub client_secret_env: Option<String>,
    /// Access token lifetime in seconds [default: 300]
    #[arg(long, value_name = "S")]
    pub token_ttl: Option<u64>,
    /// Require this static bearer token, read from an environment variable
    #[arg(long, value_name = "VAR")]
    pub bearer_token_env: Option<String>,
    /// Serve HTTPS with a test CA generated at start; writes DIR/ca.pem (give it as
    /// --ca-bundle) and DIR/client.pem (a client certificate and key, for --client-cert)
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// With --tls-dir: require a client certificate issued by the test CA (mutual TLS)
    #[arg(long, requires = "tls_dir")]
    pub mtls: bool,
}
