//! The event queue (README, "Events") against the sandbox over real HTTP: what an export does
//! shows as events in order, a reader that is late loses the oldest (counted) and never slows
//! the export, and the last event says how it ended.

mod common;

use common::{config, run_exact, sandbox, truth};
use fhirbulk::{Event, Export, Next};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Every event of an export, read on another thread while `consume` pulls its records.
fn with_events<R>(ctl: fhirbulk::Controller, consume: impl FnOnce() -> R) -> (R, Vec<Event>) {
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut v = Vec::new();
            loop {
                match ctl.next_event(Some(Duration::from_secs(60))) {
                    Next::Item(e) => v.push(e),
                    Next::End => return v,
                    Next::Timeout => panic!("no event within 60 s after {:?}", v.last()),
                    Next::Cancelled => panic!("cancelled"),
                }
            }
        });
        let r = consume();
        (r, reader.join().expect("reader"))
    })
}

fn kinds(events: &[Event]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e.kind).or_insert(0) += 1;
    }
    m
}

#[test]
fn the_events_tell_what_the_export_did_in_order() {
    let sb = sandbox();
    // Two "in progress" polls, every file broken after 3000 bytes (resumed by range), one
    // manifest entry listed twice (a warning).
    let cfg = config(&sb, "polls=2;drop=3000;dup_entry");
    let mut delivered = Vec::new();
    let mut export = Export::start(cfg).unwrap();
    let (_, events) = with_events(export.controller(), || loop {
        match export.next_record(Some(Duration::from_secs(30))).unwrap() {
            Next::Item(r) => {
                let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                delivered.push(format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                ));
            }
            Next::End => break,
            other => panic!("{:?}", matches!(other, Next::Timeout)),
        }
    });
    delivered.sort();
    assert_eq!(
        delivered,
        truth(&sb),
        "the records are still exactly the truth"
    );

    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "no gap: none dropped"
    );
    assert_eq!(export.controller().events_dropped(), 0);
    for w in events.windows(2) {
        assert!(w[0].time <= w[1].time, "times in order");
    }
    let k = kinds(&events);
    assert_eq!(events[0].kind, "kickoff", "{:?}", events[0]);
    assert!(
        events[0].str("status_url").unwrap().starts_with("http"),
        "{:?}",
        events[0]
    );
    assert_eq!(events[0].str("method").as_deref(), Some("GET"));
    assert_eq!(k.get("status"), Some(&2), "{k:?}");
    let polls: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == "status")
        .map(|e| e.u64("poll").unwrap())
        .collect();
    assert_eq!(polls, vec![1, 2]);

    let manifest: Vec<&Event> = events.iter().filter(|e| e.kind == "manifest").collect();
    assert_eq!(manifest.len(), 1, "{k:?}");
    let files = export.controller().files();
    assert_eq!(
        manifest[0].u64("output_files"),
        Some(files.len() as u64),
        "{:?}",
        manifest[0]
    );
    assert_eq!(manifest[0].fields()["complete"], true);

    // Each file: started, then resumed where the transfer broke (after a retry event naming
    // the break), then completed with its lines.
    let mut started = BTreeSet::new();
    let mut resumed = BTreeSet::new();
    let mut lines = BTreeMap::new();
    for e in &events {
        let i = e.u64("index");
        match e.kind {
            "file_started" => {
                assert!(started.insert(i.unwrap()), "started once: {e:?}");
                assert!(e.str("url").unwrap().contains("/files/"));
            }
            "file_resumed" => {
                assert!(started.contains(&i.unwrap()), "resumed after its start");
                assert!(e.u64("from_byte").unwrap() >= 3000 - 1, "{e:?}");
                resumed.insert(i.unwrap());
            }
            "file_completed" => {
                assert!(started.contains(&i.unwrap()), "completed after its start");
                lines.insert(i.unwrap(), e.u64("lines").unwrap());
            }
            _ => {}
        }
    }
    let all: BTreeSet<u64> = (0..files.len() as u64).collect();
    assert_eq!(started, all);
    assert_eq!(lines.keys().copied().collect::<BTreeSet<_>>(), all);
    assert_eq!(
        lines.values().sum::<u64>(),
        truth(&sb).len() as u64,
        "the files' lines are the records"
    );
    assert!(!resumed.is_empty(), "broken transfers resumed: {k:?}");
    let retries: Vec<&Event> = events.iter().filter(|e| e.kind == "retry").collect();
    assert!(
        retries.len() >= resumed.len()
            && retries
                .iter()
                .all(|e| e.str("code").as_deref() == Some("network")),
        "{retries:?}"
    );
    assert!(retries.iter().all(|e| e.u64("wait_ms").is_some()));
    assert!(
        events
            .iter()
            .any(|e| e.kind == "warning" && e.str("message").unwrap().contains("more than once")),
        "the duplicate entry is a warning event"
    );
    let last = events.last().unwrap();
    assert_eq!(last.kind, "completed", "{last:?}");
    assert_eq!(last.u64("files"), Some(files.len() as u64));
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.kind != "completed"));
    // After the last event the queue ends at once.
    assert!(matches!(
        export.controller().next_event(Some(Duration::from_secs(5))),
        Next::End
    ));
    // One JSON object per event, with its type, sequence number and time.
    let v: serde_json::Value = serde_json::from_str(&last.to_json()).unwrap();
    assert_eq!(v["type"], "completed");
    assert_eq!(v["seq"], last.seq);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_reader_that_is_late_loses_the_oldest_events_counted_and_the_export_is_not_slowed() {
    let sb = sandbox();
    let mut cfg = config(&sb, "polls=3");
    cfg.event_queue_size = 4;
    // Nobody reads events while the records are pulled.
    let d = run_exact(&sb, cfg.clone());
    assert!(d.progress.is_some());
    let mut export = Export::start(cfg).unwrap();
    while let Next::Item(_) = export.next_record(Some(Duration::from_secs(30))).unwrap() {}
    let ctl = export.controller();
    let mut got = Vec::new();
    while let Next::Item(e) = ctl.next_event(Some(Duration::ZERO)) {
        got.push(e);
    }
    assert_eq!(got.len(), 4, "{got:?}");
    let dropped = ctl.events_dropped();
    assert!(dropped > 0);
    let last = got.last().unwrap();
    assert_eq!(last.kind, "completed", "the newest events are kept");
    assert_eq!(last.seq, dropped + 4, "seq counts the dropped ones too");
}

#[test]
fn a_cancel_and_a_failure_are_the_last_events() {
    let sb = sandbox();
    // Cancelled while the server prepares the files.
    let export = Export::start(config(&sb, "polls=1000")).unwrap();
    let ctl = export.controller();
    loop {
        match ctl.next_event(Some(Duration::from_secs(30))) {
            Next::Item(e) if e.kind == "status" => break,
            Next::Item(_) => {}
            _ => panic!("no status event"),
        }
    }
    export.cancel();
    let mut last = None;
    while let Next::Item(e) = ctl.next_event(Some(Duration::from_secs(30))) {
        last = Some(e);
    }
    let last = last.unwrap();
    assert_eq!(last.kind, "cancelled", "{last:?}");

    // A kick-off the server refuses (an unknown group): `failed` with the error.
    let mut cfg = config(&sb, "");
    cfg.group_id = Some("no-such-group".into());
    let export = Export::start(cfg).unwrap();
    let ctl = export.controller();
    let mut events = Vec::new();
    while let Next::Item(e) = ctl.next_event(Some(Duration::from_secs(30))) {
        events.push(e);
    }
    let last = events.last().unwrap();
    assert_eq!(last.kind, "failed", "{events:?}");
    assert_eq!(last.fields()["error"]["name"], "not_found", "{last:?}");
    assert_eq!(last.fields()["error"]["http_status"], 404);
    assert!(events.iter().all(|e| e.kind != "kickoff"), "no job started");
}

#[test]
fn events_can_be_turned_off() {
    let sb = sandbox();
    let mut cfg = config(&sb, "");
    cfg.event_queue_size = 0;
    let mut export = Export::start(cfg).unwrap();
    while let Next::Item(_) = export.next_record(Some(Duration::from_secs(30))).unwrap() {}
    assert!(matches!(export.controller().next_event(None), Next::End));
    assert_eq!(export.controller().events_dropped(), 0);
}
