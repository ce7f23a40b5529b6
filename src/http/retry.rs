//! The retry policy: which failures are worth another attempt, how long to wait before it
//! (`Retry-After`, read with suspicion, or an exponential backoff with jitter) and the budget of
//! one request. Every request of the engine goes through [`run`]: kick-off, status, manifest
//! pages, files, the token endpoint and discovery.

use super::response::{HttpResponse, ERROR_BODY_LIMIT};
use crate::config::Config;
use crate::error::{is_transient_issue_code, stopped, Error, ErrorCode, Issue, Result};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `Retry-After` of at least this many seconds (more than 31 years) is a Unix time a
/// confused server sent instead of a delay.
const EPOCH_LIKE_SECS: u64 = 1_000_000_000;

/// The numbers of the policy (from the config).
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    max_attempts: u32,
    max_wait: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// A longer `Retry-After` is cut to this.
    retry_after_max: Duration,
}

impl Policy {
    pub(crate) fn new(c: &Config) -> Policy {
        Policy {
            max_attempts: c.retry_max_attempts,
            max_wait: Duration::from_millis(c.retry_max_wait_ms),
            backoff_min: Duration::from_millis(c.retry_backoff_min_ms),
            backoff_max: Duration::from_millis(c.retry_backoff_max_ms),
            retry_after_max: Duration::from_millis(c.poll_max_ms),
        }
    }

    /// The budget of one request.
    pub(crate) fn budget(&self) -> Budget {
        Budget {
            attempts: 1,
            waited: Duration::ZERO,
            backoff: self.backoff_min,
            policy: self.clone(),
        }
    }
}

/// What a `Retry-After` header said, read as a delay from now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RetryAfter {
    pub(crate) wait: Duration,
    /// The header as received (control characters escaped).
    pub(crate) raw: String,
    /// Set when the value was not what the protocol says (a Unix time instead of seconds).
    pub(crate) note: Option<String>,
}

/// `Retry-After` as delta-seconds or an HTTP-date; a number that looks like a Unix time is read
/// as one (and noted). None when absent or unreadable.
pub(crate) fn retry_after(h: &HeaderMap) -> Option<RetryAfter> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let raw = crate::error::escape_controls(v).into_owned();
    let now = SystemTime::now();
    if let Ok(s) = v.parse::<u64>() {
        if s >= EPOCH_LIKE_SECS {
            let at = UNIX_EPOCH + Duration::from_secs(s);
            let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
            return Some(RetryAfter {
                wait,
                note: Some(format!(
                    "Retry-After {raw} looks like a Unix time, not a number of seconds; read as {} s from now",
                    wait.as_secs()
                )),
                raw,
            });
        }
        return Some(RetryAfter {
            wait: Duration::from_secs(s),
            raw,
            note: None,
        });
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(RetryAfter {
        wait: at.duration_since(now).unwrap_or(Duration::ZERO),
        raw,
        note: None,
    })
}

/// Whether a failed response is worth another attempt: 429, 503, an OperationOutcome issue
/// from the transient branch, or a 5xx that names no issue at all.
pub(crate) fn is_retryable(status: u16, issues: &[Issue]) -> bool {
    status == 429
        || status == 503
        || issues.iter().any(|i| is_transient_issue_code(&i.code))
        || (status >= 500 && issues.is_empty())
}

/// What the retry loop needs of the export: whether it stops, a wait that a stop ends early
/// (and that shows in the progress), and a place for warnings.
pub(crate) trait Waiter {
    fn stopping(&self) -> bool;
    /// Wait `d` before another attempt after `reason` failed; false when the export stopped.
    fn wait_retry(&self, d: Duration, reason: &str) -> bool;
    /// Something the caller should know (progress `warnings`, the CLI's log).
    fn warn(&self, message: String);
    /// What the export does (its event queue); nothing by default.
    fn event(&self, _kind: &'static str, _fields: serde_json::Map<String, serde_json::Value>) {}
}

/// The retry budget of one request: attempts, total wait, and the backoff step.
pub(crate) struct Budget {
    attempts: u32,
    waited: Duration,
    backoff: Duration,
    policy: Policy,
}

impl Budget {
    /// How long to wait before the next attempt and, when a `Retry-After` had to be cut to fit
    /// the budget, why; `Err` says why the budget is spent.
    fn next_wait(
        &mut self,
        after: Option<&RetryAfter>,
    ) -> std::result::Result<(Duration, Option<String>), String> {
        let p = &self.policy;
        if self.attempts >= p.max_attempts {
            return Err(format!("gave up after {} attempts", self.attempts));
        }
        let left = p.max_wait.saturating_sub(self.waited);
        let (wait, note) = match after {
            Some(ra) => {
                let cap = p.retry_after_max.min(left);
                if ra.wait > cap {
                    if left.is_zero() {
                        return Err(format!(
                            "the server asked to wait {} s more (Retry-After {}), beyond what is left of retry_max_wait_ms",
                            ra.wait.as_secs(),
                            ra.raw
                        ));
                    }
                    let why = if cap == left {
                        "what is left of retry_max_wait_ms"
                    } else {
                        "poll_max_ms"
                    };
                    let mut note = format!(
                        "the server asked to wait {} s (Retry-After {}); waiting {} s ({why})",
                        ra.wait.as_secs(),
                        ra.raw,
                        cap.as_secs()
                    );
                    if let Some(n) = &ra.note {
                        note = format!("{n}; {note}");
                    }
                    (cap, Some(note))
                } else {
                    (ra.wait, ra.note.clone())
                }
            }
            None => {
                // Full backoff step with up to half of it taken off at random (jitter), so
                // many clients do not retry in lockstep.
                let d = self.backoff.mul_f64(1.0 - fastrand::f64() * 0.5);
                self.backoff = (self.backoff * 2).min(p.backoff_max);
                if d > left {
                    return Err(format!(
                        "gave up after {} attempts (retry_max_wait_ms spent)",
                        self.attempts
                    ));
                }
                (d, None)
            }
        };
        self.attempts += 1;
        self.waited += wait;
        Ok((wait, note))
    }

    /// Wait before another attempt after `err`, or give up with `err` when the budget is spent.
    pub(crate) fn wait(
        &mut self,
        w: &dyn Waiter,
        err: Error,
        after: Option<&RetryAfter>,
    ) -> Result<()> {
        let (d, reason) = self.delay(w, err, after)?;
        if w.wait_retry(d, &reason) {
            Ok(())
        } else {
            Err(stopped())
        }
    }

    /// How long to wait before another attempt after `err` and why (the wait is the caller's),
    /// or `err` when the budget is spent. A `Retry-After` cut to fit is a warning.
    pub(crate) fn delay(
        &mut self,
        w: &dyn Waiter,
        err: Error,
        after: Option<&RetryAfter>,
    ) -> Result<(Duration, String)> {
        match self.next_wait(after) {
            Err(why) => {
                let mut err = err;
                if why.starts_with("the server") {
                    err.message.push_str(&format!(" ({why})"));
                }
                Err(err)
            }
            Ok((d, note)) => {
                if let Some(n) = note {
                    w.warn(format!("{}: {n}", err.message));
                }
                let mut f = crate::events::fields! {
                    "reason" => crate::error::escape_controls(&err.message).into_owned(),
                    "code" => err.code.name(),
                    "attempt" => self.attempts,
                    "wait_ms" => d.as_millis() as u64,
                };
                if let Some(s) = err.http_status {
                    f.insert("http_status".into(), s.into());
                }
                if let Some(u) = &err.url {
                    f.insert("url".into(), crate::error::redact_url(u).into());
                }
                w.event("retry", f);
                Ok((d, err.message))
            }
        }
    }
}

/// The outcome of one attempt.
pub(crate) enum Attempt<R> {
    Done(R),
    /// Worth another attempt (after the `Retry-After`, if any).
    Retry(Error, Option<RetryAfter>),
    Fail(Error),
}

/// Make attempts until one is done or fails for good, waiting between them per the policy.
pub(crate) fn run<R>(
    policy: &Policy,
    w: &dyn Waiter,
    attempt: &mut dyn FnMut() -> Attempt<R>,
) -> Result<R> {
    let mut budget = policy.budget();
    loop {
        if w.stopping() {
            return Err(stopped());
        }
        match attempt() {
            Attempt::Done(r) => return Ok(r),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(e, after) => budget.wait(w, e, after.as_ref())?,
        }
    }
}

/// The verdict on one HTTP attempt: statuses `accept` takes come back as responses; retryable
/// failures ([`is_retryable`]) and, with `network`, connection errors and timeouts are worth
/// another attempt; any other status fails with the server's OperationOutcome.
pub(crate) fn classify<R: HttpResponse>(
    what: &str,
    url: &str,
    sent: Result<R>,
    accept: &dyn Fn(u16) -> bool,
    network: bool,
) -> Attempt<R> {
    match sent {
        Ok(resp) => {
            let status = resp.status_code();
            if accept(status) {
                return Attempt::Done(resp);
            }
            let after = retry_after(resp.header_map());
            let body = resp.error_body(ERROR_BODY_LIMIT);
            let e = Error::from_response(what, status, url, &body);
            if is_retryable(status, &e.issues) {
                Attempt::Retry(e, after)
            } else {
                Attempt::Fail(e)
            }
        }
        Err(e)
            if network
                && !e.permanent
                && matches!(e.code, ErrorCode::Network | ErrorCode::Timeout) =>
        {
            Attempt::Retry(e, None)
        }
        Err(e) => Attempt::Fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn ra(v: &str) -> Option<RetryAfter> {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        retry_after(&h)
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(ra("7").unwrap().wait, Duration::from_secs(7));
        assert!(ra("7").unwrap().note.is_none());
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = ra(&soon).unwrap().wait;
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let epoch = ra(&(now + 20).to_string()).unwrap();
        assert!(epoch.wait <= Duration::from_secs(20), "{:?}", epoch.wait);
        assert!(epoch.note.unwrap().contains("Unix time"));
        assert!(ra("soon").is_none());
    }

    fn policy(max_wait_ms: u64) -> Policy {
        let mut c = Config::new("http://h/fhir");
        c.retry_max_attempts = 5;
        c.retry_max_wait_ms = max_wait_ms;
        c.poll_max_ms = 60_000;
        Policy::new(&c)
    }

    #[test]
    fn long_retry_after_is_clamped_and_said() {
        let mut b = policy(100_000).budget();
        let huge = RetryAfter {
            wait: Duration::from_secs(86_400),
            raw: "86400".into(),
            note: None,
        };
        let (d, note) = b.next_wait(Some(&huge)).unwrap();
        assert_eq!(d, Duration::from_secs(60));
        assert!(note.unwrap().contains("poll_max_ms"));
        let (d, note) = b.next_wait(Some(&huge)).unwrap();
        assert_eq!(d, Duration::from_secs(40), "what is left of the budget");
        assert!(note.unwrap().contains("retry_max_wait_ms"));
        let why = b.next_wait(Some(&huge)).unwrap_err();
        assert!(why.contains("asked to wait 86400 s more"), "{why}");
    }

    #[test]
    fn attempts_run_out() {
        let mut b = policy(100_000).budget();
        for _ in 0..4 {
            b.next_wait(None).unwrap();
        }
        assert!(b.next_wait(None).unwrap_err().contains("5 attempts"));
    }
}
