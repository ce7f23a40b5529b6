//! The threads the exports of a process share (its own test binary: the download cap is
//! process-wide). A kick-off the server refuses for now waits without a thread, and a cancel
//! ends the wait at once.
//!
//! Fairness: the exports of a process take the download threads in turn, so an export with
//! thousands of files queued cannot starve one started after it. With the process-wide cap at
//! one download thread, a 10-file export started while a 3,000-file export downloads ends long
//! before the big one (in a queue of files, first come first served, it would wait for all
//! 3,000). Both deliver exactly their truth.

use fhirbulk::sandbox::{Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{engine, Config, Export, Next, State};
use std::time::{Duration, Instant};

fn sandbox(patients: usize) -> Sandbox {
    Sandbox::start(SandboxOptions {
        patients,
        records_per_file: 1,
        ..SandboxOptions::default()
    })
    .unwrap()
}

fn config(sb: &Sandbox) -> Config {
    let mut c = Config::new(sb.scenario_url("polls=0"));
    c.types = vec!["Patient".into()];
    c
}

fn truth(sb: &Sandbox) -> Vec<String> {
    sb.truth_ids(&TruthQuery {
        types: vec!["Patient".into()],
        ..Default::default()
    })
}

/// Take what is there now; true at the end.
fn drain(e: &mut Export, ids: &mut Vec<String>) -> bool {
    loop {
        match e.next_batch(1000, Some(Duration::ZERO)).unwrap() {
            Next::Item(b) => {
                for r in b.iter() {
                    let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                    ids.push(format!("Patient/{}", v["id"].as_str().unwrap()));
                }
            }
            Next::End => return true,
            Next::Timeout => return false,
            Next::Cancelled => panic!("cancelled"),
        }
    }
}

#[test]
fn a_small_export_is_not_starved_by_a_big_one() {
    const BIG: usize = 3000;
    let (big_sb, small_sb) = (sandbox(BIG), sandbox(10));
    engine::set_max_downloads(1);
    let mut big = Export::start(config(&big_sb)).unwrap();
    let (mut big_ids, mut small_ids) = (Vec::new(), Vec::new());
    let t = Instant::now();
    // The big export's files are all queued before the small one starts.
    while big.progress().files_total < BIG as u32 || big.progress().state != State::Downloading {
        assert!(t.elapsed() < Duration::from_secs(60));
        drain(&mut big, &mut big_ids);
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut small = Export::start(config(&small_sb)).unwrap();
    let mut big_done = false;
    let big_files_at_small_end = loop {
        assert!(t.elapsed() < Duration::from_secs(120));
        big_done |= drain(&mut big, &mut big_ids);
        if drain(&mut small, &mut small_ids) {
            break big.progress().files_done;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    while !big_done {
        assert!(t.elapsed() < Duration::from_secs(120));
        big_done = drain(&mut big, &mut big_ids);
        std::thread::sleep(Duration::from_millis(1));
    }
    engine::set_max_downloads(engine::DEFAULT_MAX_DOWNLOADS);
    assert!(
        (big_files_at_small_end as usize) < BIG / 2,
        "the small export ended only after {big_files_at_small_end} of the big one's {BIG} files"
    );
    big_ids.sort();
    small_ids.sort();
    assert_eq!(big_ids, truth(&big_sb));
    assert_eq!(small_ids, truth(&small_sb));
    eprintln!("the small export ended after {big_files_at_small_end} of {BIG} big files");
}

#[test]
fn kick_offs_refused_for_now_wait_without_a_thread_and_a_cancel_ends_them() {
    let sb = sandbox(5);
    let exports: Vec<Export> = (0..50)
        .map(|_| {
            let mut c = Config::new(sb.scenario_url("kickoff=429;error_retry_after=600"));
            c.types = vec!["Patient".into()];
            c.poll_max_ms = 600_000;
            c.retry_max_wait_ms = 3_600_000;
            Export::start(c).unwrap()
        })
        .collect();
    let t = Instant::now();
    // Each export shows its wait for the Retry-After of its refused kick-off, and the engine's
    // timer holds the wait (a control step shows the wait just before it hands the wait to the
    // timer, so both are awaited).
    while !exports
        .iter()
        .all(|e| e.progress().wait.is_some() && e.progress().retries >= 1)
        || engine::waiting() < 50
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the kick-offs did not wait ({} waits held by the timer)",
            engine::waiting()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(exports
        .iter()
        .all(|e| e.progress().state == State::KickingOff));
    assert!(engine::threads().0 <= engine::CONTROL_THREADS);
    let t = Instant::now();
    for e in &exports {
        e.cancel();
    }
    for mut e in exports {
        match e.next_record(Some(Duration::from_secs(30))).unwrap() {
            Next::Cancelled => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "a cancel ends a wait of 600 s at once"
    );
}
