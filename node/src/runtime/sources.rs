//! JSON-lines event sources (Falco, Tetragon): a blocking reader thread
//! per source follows its file (or reads stdin) and feeds the detection
//! loop's channel; parse errors are counted per source.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::ops::exposition::{SourceCounters, source_index};
use crate::telemetry::Event;
use crate::telemetry::events::LineParser;

/// Starts a blocking reader thread for a JSON-lines source (a followed file
/// or stdin) that sends parsed events into `tx` until `stop` flips or the
/// receiver is gone. Parse statistics are logged when it ends.
pub fn spawn_line_source(
    name: &'static str,
    path: Option<std::path::PathBuf>,
    from_start: bool,
    parser: LineParser,
    tx: tokio::sync::mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
    counters: Arc<SourceCounters>,
) {
    let slot = source_index(name);
    use crate::telemetry::events::{FollowFile, JsonLineReader, StartAt};
    let send_all = move |events: Vec<Event>, tx: &tokio::sync::mpsc::Sender<Event>| {
        for e in events {
            if tx.blocking_send(e).is_err() {
                return false;
            }
        }
        true
    };
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-reader"))
        .spawn(move || match path {
            Some(path) => {
                let start = if from_start {
                    StartAt::Beginning
                } else {
                    StartAt::End
                };
                let mut follow = FollowFile::new(path.clone(), start, parser);
                info!(source = name, path = %path.display(), "following event file");
                while !*stop.borrow() {
                    let r = follow.wait_events(Duration::from_millis(250));
                    counters.parse_errors[slot].store(
                        follow.stats().skipped(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    match r {
                        Ok(events) => {
                            if !send_all(events, &tx) {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(source = name, error = %e, "event file unreadable; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
                info!(
                    source = name,
                    lines = follow.stats().lines,
                    events = follow.stats().events,
                    skipped = follow.stats().skipped(),
                    "event reader stopped"
                );
            }
            None => {
                info!(source = name, "reading events from stdin");
                let mut reader = JsonLineReader::new(std::io::stdin().lock(), parser);
                while let Some(ev) = reader.next() {
                    counters.parse_errors[slot].store(
                        reader.stats().skipped(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    match ev {
                        Ok(e) => {
                            if tx.blocking_send(e).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(source = name, error = %e, "stdin failed");
                            break;
                        }
                    }
                }
                let st = reader.stats();
                info!(
                    source = name,
                    lines = st.lines,
                    events = st.events,
                    skipped = st.skipped(),
                    "stdin closed"
                );
            }
        });
    if let Err(e) = spawned {
        warn!(source = name, error = %e, "cannot start reader thread");
    }
}

/// Starts the proc connector reader thread (`[source] kind = "process"`):
/// kernel process events, attributed and translated
/// ([`crate::telemetry::process`]), into `tx` until `stop`. Without the
/// privilege to subscribe it logs why and ends; detection goes on.
pub fn spawn_process_source(
    proc_root: std::path::PathBuf,
    tx: tokio::sync::mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
) {
    use crate::telemetry::process::{ProcConnector, ProcessTranslator};
    let spawned = std::thread::Builder::new()
        .name("process-reader".into())
        .spawn(move || {
            let mut conn = match ProcConnector::open(Duration::from_millis(250)) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "process source unavailable (needs root or CAP_NET_ADMIN); continuing without it");
                    return;
                }
            };
            info!(proc_root = %proc_root.display(), "watching process events (proc connector)");
            let mut t = ProcessTranslator::new(proc_root);
            let (mut dropped, mut bad) = (0u64, 0u64);
            while !*stop.borrow() {
                let events = match conn.recv() {
                    Ok(Some(evs)) => evs,
                    Ok(None) => {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            warn!(dropped, "the kernel dropped process events (socket buffer full)");
                        }
                        continue;
                    }
                    Err(e) => {
                        bad += 1;
                        if bad.is_power_of_two() {
                            warn!(error = %e, bad, "process event datagram refused");
                        }
                        continue;
                    }
                };
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                for ev in events {
                    for e in t.translate(ev, now_ms) {
                        if tx.blocking_send(e).is_err() {
                            return;
                        }
                    }
                }
            }
            let st = t.stats();
            info!(received = st.received, emitted = st.emitted, unresolved = st.unresolved, dropped, bad, "process reader stopped");
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the process reader thread");
    }
}
