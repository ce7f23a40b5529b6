//! Many exports in one process: 200 exports started at once against one sandbox (a separate
//! process, so that the thread count measured is the engine's), each delivering exactly its
//! truth, while the process's threads stay under the bound the engine states — however many
//! exports there are — and the exports wait between polls at the same time without a thread
//! each.

use fhirbulk::engine;
use fhirbulk::sandbox::{Sandbox, SandboxOptions, TruthQuery};
use fhirbulk::{Config, Export, Kind, Level, Next};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXPORTS: usize = 200;
const PATIENTS: usize = 30;
const RECORDS_PER_FILE: usize = 25;
const TYPES: [&str; 2] = ["Patient", "Observation"];

/// The sandbox binary on an ephemeral port; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server() -> Server {
    let dir = std::env::temp_dir().join(format!("fhirbulk-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let child = Command::new(env!("CARGO_BIN_EXE_fhirbulk-sandbox"))
        .args(["--port", "0", "--patients", &PATIENTS.to_string()])
        .args(["--records-per-file", &RECORDS_PER_FILE.to_string()])
        .args(["--threads", "16", "--port-file"])
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the sandbox binary starts");
    let mut s = Server {
        child,
        base: String::new(),
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            if !p.trim().is_empty() {
                s.base = format!("http://127.0.0.1:{}/x/polls=4/fhir", p.trim());
                let _ = std::fs::remove_dir_all(&dir);
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the sandbox did not write its port");
}

/// The ids a group export of TYPES must deliver (from an in-process sandbox of the same data,
/// stopped before the exports start).
fn truth() -> Vec<String> {
    let sb = Sandbox::start(SandboxOptions {
        patients: PATIENTS,
        records_per_file: RECORDS_PER_FILE,
        ..SandboxOptions::default()
    })
    .unwrap();
    let ids = sb.truth_ids(&TruthQuery {
        level: "group".into(),
        group: Some("g1".into()),
        types: TYPES.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    });
    sb.stop();
    ids
}

fn threads() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn two_hundred_exports_at_once_each_exact_in_bounded_threads() {
    let truth = truth();
    assert!(!truth.is_empty());
    let srv = server();
    // Let the in-process sandbox's threads wind down before the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let baseline = threads();
    // Control threads, download threads, the timer, and the runtime thread of the one shared
    // control client (all exports have the same client settings).
    let bound = engine::CONTROL_THREADS + engine::max_downloads() + 1 + 1;

    let mut exports: Vec<Export> = (0..EXPORTS)
        .map(|_| {
            let mut c = Config::new(srv.base.clone());
            c.level = Level::Group;
            c.group_id = Some("g1".into());
            c.types = TYPES.iter().map(|t| t.to_string()).collect();
            // Four "in progress" answers, 300 ms apart: the exports wait at the same time.
            c.poll_min_ms = 300;
            c.poll_max_ms = 300;
            c.concurrency = 2;
            Export::start(c).expect("starts")
        })
        .collect();
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); EXPORTS];
    let mut done = [false; EXPORTS];
    let (mut most_threads, mut most_waiting) = (0, 0);
    let t = Instant::now();
    while done.iter().any(|d| !d) {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the exports did not end"
        );
        let mut got = false;
        for (i, e) in exports.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match e.next_batch(1000, Some(Duration::ZERO)) {
                Ok(Next::Item(b)) => {
                    got = true;
                    for r in b.iter() {
                        assert_eq!(r.kind, Kind::Output);
                        let v: serde_json::Value = serde_json::from_slice(r.data).unwrap();
                        ids[i].push(format!("{}/{}", r.resource_type, v["id"].as_str().unwrap()));
                    }
                }
                Ok(Next::End) => done[i] = true,
                Ok(Next::Timeout) => {}
                Ok(Next::Cancelled) => panic!("export {i} was cancelled"),
                Err(e) => panic!("export {i} failed: {e}"),
            }
        }
        most_threads = most_threads.max(threads());
        most_waiting = most_waiting.max(engine::waiting());
        if !got {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (i, mut got) in ids.into_iter().enumerate() {
        got.sort();
        assert_eq!(got, truth, "export {i} delivered other ids than the truth");
    }
    assert!(
        most_threads <= baseline + bound,
        "{most_threads} threads at the most, over the baseline {baseline} + the bound {bound}"
    );
    assert!(
        most_waiting >= EXPORTS / 2,
        "only {most_waiting} exports were waiting at the same time"
    );
    eprintln!(
        "{EXPORTS} exports: at most {most_threads} threads (baseline {baseline}, bound {bound}), \
         {most_waiting} waiting at once, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(exports);
}
