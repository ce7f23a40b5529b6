//! What an export is doing, as it does it: a bounded queue of [`Event`]s the caller pulls
//! (librdkafka's event queue, SQLite's pull model), never a callback into the caller's code
//! from an engine thread. A full queue drops its oldest event and counts it: an export never
//! waits for a caller that does not read its events.
//!
//! Every event has a sequence number (1, 2, ...: a gap is where events were dropped), a time
//! and a type; the other fields depend on the type (README, "Events"). Events carry URLs
//! redacted like error messages, never a token, a secret or a record.

use parking_lot::{Condvar, Mutex};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// What a pull of the queue gave (the export maps it to its `Next`; this module depends on
/// nothing of the engine's).
#[derive(Debug)]
pub(crate) enum Pulled<T> {
    Item(T),
    /// The last event was taken (or events are off).
    End,
    Timeout,
}

/// Events kept when nobody reads them (config `event_queue_size`).
pub const DEFAULT_QUEUE_SIZE: usize = 1000;

/// One event of an export.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// 1 for the export's first event, then one more for each (a gap: events dropped).
    pub seq: u64,
    pub time: SystemTime,
    /// `kickoff`, `status`, `manifest`, `file_started`, `file_completed`, `file_resumed`,
    /// `file_restarted`, `retry`, `token`, `warning`, `job_deleted`, `completed`, `failed`,
    /// `cancelled`, ... (README, "Events").
    pub kind: &'static str,
    /// The type's fields as a JSON object. Kept as text: an event in the queue is one small
    /// allocation (exports of many small files make several events per file).
    fields: Box<str>,
}

impl Event {
    /// The type's fields (see the README).
    pub fn fields(&self) -> Map<String, Value> {
        serde_json::from_str(&self.fields).unwrap_or_default()
    }

    /// `{"seq":1,"time":"2026-12-01T10:00:00.123Z","type":"kickoff",...fields}`.
    pub fn to_json(&self) -> String {
        let head = format!(
            "{{\"seq\":{},\"time\":\"{}\",\"type\":{}",
            self.seq,
            rfc3339_ms(self.time),
            Value::from(self.kind)
        );
        match self.fields.strip_prefix('{') {
            Some(rest) if rest != "}" => format!("{head},{rest}"),
            _ => format!("{head}}}"),
        }
    }

    /// A field, when there is one.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.fields().remove(key)
    }

    /// A field as a string, when it is one.
    pub fn str(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A field as an unsigned number, when it is one.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }
}

/// `2026-12-01T10:00:00.123Z` (UTC, milliseconds).
pub fn rfc3339_ms(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&fmt).unwrap_or_default()
}

struct Queue {
    events: VecDeque<Event>,
    next_seq: u64,
    dropped: u64,
    /// The export's last event is in: a pull on an empty queue gives the end.
    closed: bool,
}

/// The queue of one export (in its monitor).
pub(crate) struct Events {
    cap: usize,
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Events {
    /// A queue keeping at most `cap` events (0: events off, none kept or counted).
    pub(crate) fn new(cap: usize) -> Events {
        Events {
            cap,
            q: Mutex::new(Queue {
                events: VecDeque::new(),
                next_seq: 1,
                dropped: 0,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// Add an event (after the last one, nothing is added).
    pub(crate) fn push(&self, kind: &'static str, fields: Map<String, Value>) {
        if self.cap == 0 {
            return;
        }
        // Written out before the lock is taken (pushes come from every thread of the export).
        let text = Value::Object(fields).to_string();
        let mut q = self.q.lock();
        if q.closed {
            return;
        }
        if q.events.len() >= self.cap {
            q.events.pop_front();
            q.dropped += 1;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.events.push_back(Event {
            seq,
            time: SystemTime::now(),
            kind,
            fields: text.into_boxed_str(),
        });
        drop(q);
        self.cv.notify_all();
    }

    /// Add the export's last event and close the queue.
    pub(crate) fn push_last(&self, kind: &'static str, fields: Map<String, Value>) {
        self.push(kind, fields);
        self.q.lock().closed = true;
        self.cv.notify_all();
    }

    /// The next event, waiting up to `timeout` (None: until there is one or the export ended).
    pub(crate) fn next(&self, timeout: Option<Duration>) -> Pulled<Event> {
        match self.next_if(timeout, &mut |_| true) {
            Pulled::Item(e) => Pulled::Item(e.expect("taken")),
            Pulled::End => Pulled::End,
            Pulled::Timeout => Pulled::Timeout,
        }
    }

    /// Like [`Events::next`], but the event is taken only when `take` says so; otherwise it
    /// stays first in the queue and `Item(None)` comes back (a C caller whose buffer is too
    /// small for it).
    pub(crate) fn next_if(
        &self,
        timeout: Option<Duration>,
        take: &mut dyn FnMut(&Event) -> bool,
    ) -> Pulled<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.q.lock();
        let mut timed_out = false;
        loop {
            if let Some(e) = q.events.front() {
                return Pulled::Item(if take(e) { q.events.pop_front() } else { None });
            }
            if q.closed || self.cap == 0 {
                return Pulled::End;
            }
            if timed_out {
                return Pulled::Timeout;
            }
            match deadline {
                None => self.cv.wait(&mut q),
                Some(d) => {
                    timed_out = Instant::now() >= d || self.cv.wait_until(&mut q, d).timed_out();
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.q.lock().dropped
    }
}

/// Build an event's fields: `fields!{"index" => 3, "url" => u}`.
macro_rules! fields {
    ($($k:literal => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_owned(), serde_json::Value::from($v)); )*
        m
    }};
}
pub(crate) use fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let e = Events::new(3);
        for i in 0..5u64 {
            e.push("status", fields! {"poll" => i});
        }
        e.push_last("completed", fields! {});
        e.push("status", fields! {"poll" => 9});
        assert_eq!(e.dropped(), 3);
        let mut seqs = Vec::new();
        while let Pulled::Item(ev) = e.next(Some(Duration::ZERO)) {
            seqs.push((ev.seq, ev.kind));
        }
        assert_eq!(seqs, vec![(4, "status"), (5, "status"), (6, "completed")]);
        assert!(matches!(e.next(None), Pulled::End), "closed: no wait");
    }

    #[test]
    fn a_pull_waits_for_the_next_event() {
        let e = std::sync::Arc::new(Events::new(10));
        assert!(matches!(
            e.next(Some(Duration::from_millis(5))),
            Pulled::Timeout
        ));
        let e2 = e.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            e2.push("warning", fields! {"message" => "m"});
        });
        match e.next(Some(Duration::from_secs(10))) {
            Pulled::Item(ev) => {
                let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
                assert_eq!(v["type"], "warning");
                assert_eq!(v["message"], "m");
                assert_eq!(v["seq"], 1);
                assert!(v["time"].as_str().unwrap().ends_with('Z'));
            }
            _ => panic!("no event"),
        }
        t.join().unwrap();
    }

    #[test]
    fn timestamps_are_rfc3339_utc_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339_ms(t), "2024-02-29T23:59:59.123Z");
    }
}
