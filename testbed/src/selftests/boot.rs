//! Runs selftests in L1 boots: one boot takes tests in order until one of
//! them takes L1 down (QEMU dies, the guest panics or falls silent); that
//! test is `BROKEN` with what the runner saw, and a fresh boot goes on with
//! the next test, the way cloud-hypervisor re-runs a wedged batch.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::qemu::BootConfig;
use crate::runner::{self, BootOutcome, Interrupt, RunEvent, Session, Timeouts};

/// One test as the agent runs it.
#[derive(Debug, Clone)]
pub struct TestJob {
    /// `kvm:x86/xapic_ipi_test`.
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub timeout: Duration,
    /// Boot devices (QEMU ids) to bind to vfio-pci first; their L1
    /// addresses go into `VFIO_SELFTESTS_BDF` (the first) and
    /// `VFIO_SELFTESTS_BDFS` (all, space-separated).
    pub vfio_devices: Vec<String>,
}

/// What became of one test.
#[derive(Debug, Clone, Default)]
pub struct TestRun {
    pub name: String,
    /// How it ended in L1; `None` when it broke the boot or never ran.
    pub result: Option<wire::ExecResult>,
    /// Why the boot ended during this test (QEMU's last words, a panic, a
    /// hang), or why it never ran.
    pub broken: Option<String>,
    pub output: Vec<String>,
    /// Host wall time from Exec to Exited.
    pub wall: Duration,
    /// Which boot ran it (0, 1, ...), for its console log.
    pub boot: usize,
}

/// One boot's facts for the report header.
#[derive(Debug, Clone, Default)]
pub struct BootInfo {
    pub qemu_version: String,
    pub platform: Option<wire::Platform>,
    pub console_log: PathBuf,
    pub boot_to_ready: Duration,
}

/// Boots made and tests run.
#[derive(Debug, Default)]
pub struct Runs {
    pub tests: Vec<TestRun>,
    pub boots: Vec<BootInfo>,
    /// The first boot never reached the agent: the kernel cannot be
    /// tested here (exit 125).
    pub no_boot: Option<String>,
}

/// Runs `tests` in as few boots as they allow. `config(n)` gives boot n's
/// configuration (its own log directory and sockets).
pub async fn run_tests(
    config: &(dyn Fn(usize) -> Result<BootConfig, String> + Sync),
    tests: &[TestJob],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Runs {
    let mut runs = Runs::default();
    let mut next = 0;
    while next < tests.len() {
        let index = runs.boots.len();
        let cfg = match config(index) {
            Ok(c) => c,
            Err(e) => {
                not_run(&mut runs, &tests[next..], index, &e);
                break;
            }
        };
        let mut outcome = BootOutcome::new(&cfg);
        let started = Session::start(&cfg, timeouts, &mut outcome, on_event).await;
        runs.boots.push(BootInfo {
            qemu_version: outcome.qemu_version.clone(),
            platform: outcome.ready.as_ref().map(|r| r.platform.clone()),
            console_log: cfg.console_log.clone(),
            boot_to_ready: outcome.timings.boot_to_ready,
        });
        let mut session = match started {
            Ok(s) => s,
            Err(failure) => {
                let why = format!("L1 did not boot to the agent: {}", failure.message);
                if index == 0 {
                    runs.no_boot = Some(why.clone());
                }
                not_run(&mut runs, &tests[next..], index, &why);
                break;
            }
        };
        // KVM's AVIC events exist where kvm_amd runs L1's guests
        let kvm_amd = outcome
            .ready
            .as_ref()
            .and_then(|r| r.platform.kvm_vendor.as_deref())
            == Some("kvm_amd");
        let count_events: Vec<String> = if kvm_amd {
            super::avic::EVENTS.iter().map(|e| e.to_string()).collect()
        } else {
            Vec::new()
        };
        let mut ended_by = None;
        while next < tests.len() {
            let test = &tests[next];
            next += 1;
            on_event(RunEvent::TestStarted {
                variant: cfg.variant.name,
                test: test.name.clone(),
            });
            let run = run_one(&mut session, test, index, timeouts, &count_events).await;
            let broke = run.broken.clone();
            runs.tests.push(run);
            if let Some(why) = broke {
                ended_by = Some(why);
                break;
            }
        }
        match ended_by {
            // dropping the session kills what is left of QEMU
            Some(_) => drop(session),
            None => {
                on_event(RunEvent::PoweringOff {
                    variant: cfg.variant.name,
                });
                let _ = session.poweroff().await;
            }
        }
    }
    runs
}

fn not_run(runs: &mut Runs, rest: &[TestJob], boot: usize, why: &str) {
    for t in rest {
        runs.tests.push(TestRun {
            name: t.name.clone(),
            broken: Some(format!("not run: {why}")),
            boot,
            ..Default::default()
        });
    }
}

/// Extra seconds the host waits beyond a test's own timeout, which the
/// agent enforces, before it calls the guest hung.
const HOST_SLACK: Duration = Duration::from_secs(30);

async fn run_one(
    session: &mut Session,
    test: &TestJob,
    boot: usize,
    timeouts: Timeouts,
    count_events: &[String],
) -> TestRun {
    let mut run = TestRun {
        name: test.name.clone(),
        boot,
        ..Default::default()
    };
    let mut env = Vec::new();
    let mut bdfs = Vec::new();
    for id in &test.vfio_devices {
        match session.bdf(id) {
            Some(bdf) => bdfs.push(bdf.to_owned()),
            None => {
                run.result = Some(wire::ExecResult {
                    status: wire::ExecStatus::SetupFailed {
                        error: format!("boot has no device {id}"),
                    },
                    millis: 0,
                    dropped_bytes: 0,
                    kernel_warnings: vec![],
                    event_counts: None,
                });
                return run;
            }
        }
    }
    if let Some(first) = bdfs.first() {
        env.push(("VFIO_SELFTESTS_BDF".to_owned(), first.clone()));
        env.push(("VFIO_SELFTESTS_BDFS".to_owned(), bdfs.join(" ")));
    }
    let job = wire::ExecJob {
        name: test.name.clone(),
        argv: test.argv.clone(),
        env,
        cwd: Some(test.cwd.clone()),
        timeout_secs: test.timeout.as_secs(),
        vfio_pci: bdfs,
        count_events: count_events.to_vec(),
    };
    let started = Instant::now();
    let what = format!("selftest {}", test.name);
    if session.send(&wire::HostMessage::Exec(job)).await.is_err() {
        run.broken = Some(session.gone(&what).await);
        return run;
    }
    let deadline = started + test.timeout + HOST_SLACK;
    loop {
        let silence = timeouts.step.min(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        match session.next_message(silence, &what).await {
            Interrupt::Message(wire::AgentMessage::ExecOutput { line }) => run.output.push(line),
            Interrupt::Message(wire::AgentMessage::Progress { .. }) => {
                if Instant::now() >= deadline {
                    run.broken = Some(format!(
                        "the agent did not stop {} within {} s of its {} s timeout",
                        test.name,
                        HOST_SLACK.as_secs(),
                        test.timeout.as_secs()
                    ));
                    break;
                }
            }
            Interrupt::Message(wire::AgentMessage::Exited(result)) => {
                run.result = Some(result);
                break;
            }
            Interrupt::Message(other) => {
                run.broken = Some(format!(
                    "agent sent {} during {what}",
                    runner::message_kind(&other)
                ));
                break;
            }
            Interrupt::Failed(message) => {
                run.broken = Some(message);
                break;
            }
        }
    }
    run.wall = started.elapsed();
    run
}
