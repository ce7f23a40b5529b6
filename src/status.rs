//! After the kick-off: polling the status URL until the manifest is ready (partial manifests of
//! v3 handed on as they come), following a manifest's pages, and fetching the manifest again
//! when file links expire.

use crate::error::{escape_controls, redact_url, stopped, Error, Result};
use crate::files::{Files, Match};
use crate::http::retry::{self, retry_after, Attempt, Budget};
use crate::http::{
    content_type, read_capped, Http, HttpResponse, ERROR_BODY_LIMIT, STATUS_BODY_LIMIT,
};
use crate::manifest::{Manifest, ManifestFile, NotManifest};
use crate::monitor::{Monitor, State};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What one status poll found.
pub(crate) enum Polled {
    /// The export is complete: the complete manifest's first page.
    Ready(Manifest),
    /// Poll again after `wait` (`retry`: after a failed request rather than a 202).
    Again {
        wait: Duration,
        reason: String,
        retry: bool,
    },
}

/// Polling the status URL one request at a time, so that the wait between polls holds no
/// thread (the engine's timer holds it): the backoff between 202s and the retry budgets carry
/// from one poll to the next.
pub(crate) struct Poller {
    min: Duration,
    max: Duration,
    backoff_max: Duration,
    backoff: Duration,
    /// The budget of the request in progress (a retryable failure and its next attempts).
    request: Option<Budget>,
    /// For job failures reported with X-Export-Status on a 200 (v3 separate-export-status).
    job: Budget,
}

impl Poller {
    pub(crate) fn new(http: &Http) -> Poller {
        let c = &*http.config;
        let min = Duration::from_millis(c.poll_min_ms);
        let max = Duration::from_millis(c.poll_max_ms);
        Poller {
            min,
            max,
            backoff_max: Duration::from_millis(c.poll_backoff_max_ms.min(c.poll_max_ms)).max(min),
            backoff: min,
            request: None,
            job: http.policy.budget(),
        }
    }

    /// One status request. Partial manifests (v3) of a 202 answer, and the pages they link,
    /// go to `partial` (their downloads start at once).
    pub(crate) fn poll(
        &mut self,
        http: &Http,
        monitor: &Monitor,
        status_url: &str,
        partial: &mut dyn FnMut(Manifest) -> Result<()>,
    ) -> Result<Polled> {
        const WHAT: &str = "export status request";
        if monitor.stopping() {
            return Err(stopped());
        }
        monitor.polls.fetch_add(1, Ordering::Relaxed);
        let sent = http.send(WHAT, status_url, true, &|u| http.get_json(u));
        let resp = match retry::classify(WHAT, status_url, sent, &|s| s == 200 || s == 202, true) {
            Attempt::Done(r) => r,
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(e, after) => {
                let budget = self.request.get_or_insert_with(|| http.policy.budget());
                let (wait, reason) = budget.delay(monitor, e, after.as_ref())?;
                return Ok(Polled::Again {
                    wait,
                    reason,
                    retry: true,
                });
            }
        };
        self.request = None;
        let headers = resp.headers().clone();
        let mut status = resp.status().as_u16();
        if let Some(s) = headers
            .get("x-export-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().get(..3))
            .and_then(|v| v.parse::<u16>().ok())
        {
            status = s;
        }
        if let Some(p) = headers.get("x-progress").and_then(|v| v.to_str().ok()) {
            let p: String = p.chars().take(500).collect();
            *monitor.server_progress.lock() = Some(escape_controls(&p).into_owned());
        }
        match status {
            200 => {
                let body = read_capped(WHAT, status_url, resp, STATUS_BODY_LIMIT)?;
                let ct = content_type(&headers);
                if !ct.is_empty() && !ct.contains("json") {
                    return Err(Error::protocol(format!(
                        "the export manifest came as Content-Type {:?}, not JSON",
                        escape_controls(&ct)
                    ))
                    .with_url(status_url));
                }
                Manifest::parse(&body, status_url).map(Polled::Ready)
            }
            202 => {
                let body = read_capped(WHAT, status_url, resp, STATUS_BODY_LIMIT)?;
                // v3: a 202 may carry a partial manifest of the files ready so far, with pages.
                if body.iter().any(|b| !b.is_ascii_whitespace()) {
                    match Manifest::parse_or(&body, status_url) {
                        Ok(m) => partial(m)?,
                        Err(NotManifest::Invalid(e)) => return Err(e),
                        Err(NotManifest::NotJson(_) | NotManifest::NoOutput(_)) => {}
                    }
                }
                monitor.set_state(State::Waiting);
                let (min, max) = (self.min, self.max);
                let wait = match retry_after(&headers) {
                    Some(r) => {
                        let d = r.wait.clamp(min, max);
                        if let Some(n) = &r.note {
                            monitor.warn(format!("{WHAT}: {n}"));
                        }
                        if r.wait > max {
                            monitor.warn(format!(
                                "{WHAT}: the server asked to wait {} s before the next poll (Retry-After {}); waiting {} s (poll_max_ms)",
                                r.wait.as_secs(),
                                r.raw,
                                d.as_secs()
                            ));
                        }
                        d
                    }
                    None => {
                        let d = self.backoff;
                        self.backoff = (self.backoff * 2).min(self.backoff_max);
                        d
                    }
                };
                let progress = monitor.server_progress.lock().clone();
                if monitor.events.enabled() {
                    let raw = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| {
                            escape_controls(&v.chars().take(100).collect::<String>()).into_owned()
                        });
                    monitor.event(
                        "status",
                        crate::events::fields! {
                            "poll" => monitor.polls.load(Ordering::Relaxed),
                            "http_status" => 202,
                            "x_progress" => progress.clone(),
                            "retry_after" => raw,
                            "wait_ms" => wait.as_millis() as u64,
                        },
                    );
                }
                let reason = match progress {
                    Some(p) => format!("the server is preparing the export ({p})"),
                    None => "the server is preparing the export".to_owned(),
                };
                Ok(Polled::Again {
                    wait,
                    reason,
                    retry: false,
                })
            }
            _ => {
                let after = retry_after(&headers);
                let body = resp.error_body(ERROR_BODY_LIMIT);
                let e = Error::from_response(WHAT, status, status_url, &body);
                if !retry::is_retryable(status, &e.issues) {
                    return Err(e);
                }
                let (wait, reason) = self.job.delay(monitor, e, after.as_ref())?;
                Ok(Polled::Again {
                    wait,
                    reason,
                    retry: true,
                })
            }
        }
    }
}

/// Fetch one page of a manifest (its `link` `next`).
pub(crate) fn fetch_manifest_page(http: &Http, url: &str) -> Result<Manifest> {
    let build = |u: &str| http.get_json(u);
    let resp = http.send_retrying("manifest page request", url, true, &build, &|s| s == 200)?;
    let body = read_capped("manifest page request", url, resp, STATUS_BODY_LIMIT)?;
    Manifest::parse(&body, url)
}

/// Following a manifest's `link` pages: a page fetched twice (a `next` pointing back) is a
/// protocol error at once, not an endless walk.
pub(crate) struct Pages {
    seen: HashSet<String>,
}

impl Pages {
    /// Paging from the manifest at `first` (the status URL for the complete manifest).
    pub(crate) fn new(first: &str) -> Pages {
        Pages {
            seen: HashSet::from([first.to_owned()]),
        }
    }

    /// The next page to fetch after `page`, if any.
    pub(crate) fn next(&mut self, page: &Manifest) -> Result<Option<String>> {
        let Some(next) = page.next.clone() else {
            return Ok(None);
        };
        if !self.seen.insert(next.clone()) {
            return Err(Error::protocol(format!(
                "the manifest's link \"next\" points back to a page already fetched: its pages repeat (after {} pages)",
                self.seen.len()
            ))
            .with_url(&next));
        }
        if self.seen.len() > 100_000 {
            return Err(
                Error::protocol("the manifest has more than 100000 pages; giving up")
                    .with_url(&next),
            );
        }
        Ok(Some(next))
    }
}

/// Fetch the complete manifest again (every page) and match its entries to the known files:
/// their URLs now, by file index.
pub(crate) fn urls_again(
    http: &Http,
    files: &Mutex<Files>,
    status_url: &str,
) -> Result<HashMap<u32, String>> {
    let build = |u: &str| http.get_json(u);
    let resp = http.send_retrying("manifest request", status_url, true, &build, &|s| s == 200)?;
    let body = read_capped("manifest request", status_url, resp, STATUS_BODY_LIMIT)?;
    let first = Manifest::parse(&body, status_url)?;
    let mut session = files.lock().session(false);
    let mut urls = HashMap::new();
    let mut pages = Pages::new(status_url);
    let mut page = first;
    loop {
        let matches = files.lock().resolve(&mut session, page.files.clone())?;
        for (f, m) in page.files.iter().zip(matches) {
            match m {
                Match::Known(i) => {
                    urls.insert(i, f.url.clone());
                }
                Match::Unknown => http.waiter().warn(format!(
                    "the manifest fetched again lists a file the first did not ({}); it is ignored",
                    redact_url(&f.url)
                )),
                Match::New(_) | Match::Duplicate(_) => {}
            }
        }
        let Some(next) = pages.next(&page)? else {
            break;
        };
        page = fetch_manifest_page(http, &next)?;
    }
    Ok(urls)
}

/// The files of the manifest fetched again from the status URL (all its pages), in the order
/// a first fetch registers them: for a resume from a checkpoint that counts its files.
pub(crate) fn manifest_again(http: &Http, status_url: &str) -> Result<Vec<ManifestFile>> {
    let build = |u: &str| http.get_json(u);
    let resp = http.send_retrying("manifest request", status_url, true, &build, &|s| s == 200)?;
    let body = read_capped("manifest request", status_url, resp, STATUS_BODY_LIMIT)?;
    let mut page = Manifest::parse(&body, status_url)?;
    drop(body);
    let mut files = Vec::new();
    let mut pages = Pages::new(status_url);
    loop {
        let next = pages.next(&page)?;
        files.append(&mut page.files);
        let Some(next) = next else {
            break;
        };
        page = fetch_manifest_page(http, &next)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(next: Option<&str>) -> Manifest {
        let mut v =
            json!({"transactionTime": "2024-01-01T00:00:00Z", "request": "x", "output": []});
        if let Some(n) = next {
            v["link"] = json!([{"relation": "next", "url": n}]);
        }
        Manifest::from_value(v, "http://h/status").unwrap()
    }

    #[test]
    fn pages_that_point_back_are_an_error() {
        let mut p = Pages::new("http://h/status");
        assert_eq!(
            p.next(&page(Some("http://h/p2"))).unwrap().as_deref(),
            Some("http://h/p2")
        );
        assert_eq!(p.next(&page(None)).unwrap(), None);
        let e = p.next(&page(Some("http://h/status"))).unwrap_err();
        assert!(e.message.contains("points back"), "{}", e.message);
    }
}
