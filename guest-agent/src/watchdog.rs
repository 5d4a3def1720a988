//! A stall report for hung scenarios: when the agent's main thread makes no
//! progress for `STALL` during a job, another thread writes what every
//! agent thread is blocked in (state, wait channel, kernel stack) to the
//! console. The host gives up on a silent agent after 60 s and keeps the
//! console log, so the report is there to read afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STALL: Duration = Duration::from_secs(20);

static BUSY: AtomicBool = AtomicBool::new(false);
/// Milliseconds since `EPOCH` at the main thread's last sign of progress.
static LAST: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The main thread is still making progress.
pub fn alive() {
    LAST.store(now_ms(), Ordering::Relaxed);
}

/// A job starts (`true`) or ends: stalls count only during jobs, since
/// between them the agent waits for the host as long as it likes.
pub fn busy(on: bool) {
    alive();
    BUSY.store(on, Ordering::Relaxed);
}

/// Starts the watching thread.
pub fn start() {
    alive();
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(|| {
            let mut reported_at = None;
            loop {
                std::thread::sleep(Duration::from_secs(2));
                let last = LAST.load(Ordering::Relaxed);
                let quiet = now_ms().saturating_sub(last);
                if !BUSY.load(Ordering::Relaxed) || quiet < STALL.as_millis() as u64 {
                    continue;
                }
                // one report per stall
                if reported_at == Some(last) {
                    continue;
                }
                reported_at = Some(last);
                say!("stall: no progress for {} s; agent threads:", quiet / 1000);
                for line in thread_report() {
                    say!("stall:   {line}");
                }
            }
        });
}

/// Per thread of this process: name, state, wait channel and kernel stack.
fn thread_report() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return vec!["/proc/self/task unreadable".into()];
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        // "tid (comm) S ...": the state follows the last ')'
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        out.push(format!(
            "{} {} state {state} wchan {}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim()
        ));
        for frame in read("stack").lines().take(12) {
            out.push(format!("    {frame}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_report_names_each_thread_with_its_state() {
        let report = super::thread_report();
        let threads: Vec<&String> = report.iter().filter(|l| !l.starts_with("    ")).collect();
        assert!(!threads.is_empty(), "{report:?}");
        for t in threads {
            assert!(t.contains(" state ") && t.contains(" wchan "), "{t}");
        }
    }
}
