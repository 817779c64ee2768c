//! Progress lines on stderr for long CLI work (bench, snapshot save and
//! restore): one line per interval, so an operator sees it is alive.
//!
//! A plain thread, so it keeps ticking while the work blocks (a snapshot
//! restore runs on a blocking thread) as well as during async work. The
//! interval is 1 s; `HUB_PROGRESS_INTERVAL` (e.g. `200ms`) shortens it, which
//! tests use to see several lines from a short run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Prints `what(elapsed)` on stderr every interval until dropped.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The interval between progress lines.
pub fn interval() -> Duration {
    std::env::var("HUB_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(1))
}

impl Progress {
    pub fn start(what: impl Fn(Duration) -> String + Send + 'static) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let every = interval();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let started = Instant::now();
                let mut next = started + every;
                loop {
                    let now = Instant::now();
                    if now < next {
                        std::thread::park_timeout(next - now);
                    }
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    if Instant::now() >= next {
                        eprintln!("{}", what(started.elapsed()));
                        next += every;
                    }
                }
            })
            .ok();
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
