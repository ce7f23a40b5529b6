//! A sentinel signature (issue 17): the sandbox's scenario key `sig=` signs every pre-signed URL
//! of an export with it, and the suites search every output of the client for it. No output
//! but the files' URLs themselves (manifests, checkpoints, file lists: what resume needs) may
//! hold it.

use fhirbulk::sandbox::Sandbox;
use serde_json::Value;

/// The signature of the URLs of [`sig_url`]'s scenarios.
pub const SIG: &str = "SENTINELSIG123";

/// The base URL of scenario `keys` with `sig=` [`SIG`] in front. The scenario is in the path:
/// there the sentinel is percent-encoded (`%53ENTINEL...`), so that only the query strings
/// carry it verbatim.
pub fn sig_url(sb: &Sandbox, keys: &str) -> String {
    let url = sb.scenario_url(&format!(
        "sig=%{:02X}{};{keys}",
        SIG.as_bytes()[0],
        &SIG[1..]
    ));
    assert!(!url.contains(SIG), "{url}");
    url
}

/// Whether the sandbox received a request whose query string carried the sentinel (the URLs
/// really were signed with it: a search for it cannot pass for want of it).
pub fn sandbox_saw_sig(sb: &Sandbox) -> bool {
    sb.requests().iter().any(|r| r.raw_query.contains(SIG))
}

/// `v` with every string that is a whole http(s) URL replaced by `"<url>"`; any other text
/// quoting one (a message) is kept, to be searched.
pub fn without_urls(v: Value) -> Value {
    match v {
        Value::String(s)
            if (s.starts_with("http://") || s.starts_with("https://"))
                && !s.contains(char::is_whitespace) =>
        {
            Value::String("<url>".into())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(without_urls).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, without_urls(v))).collect())
        }
        other => other,
    }
}

/// Fails when `text` (what `what` names) holds the sentinel.
pub fn assert_no_sig(what: &str, text: &str) {
    assert!(!text.contains(SIG), "{what}: the signature in {text}");
}
