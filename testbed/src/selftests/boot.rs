//! Runs selftests in L1s. By default each test starts from an L1 restored
//! from a saved state (the L1 of this kernel, selftests initramfs, variant
//! and devices, saved at agent-ready: `restore`), so no test sees another's
//! leftovers and a test that takes L1 down (QEMU dies, the guest panics or
//! falls silent) costs nothing more than its own restore: it is `BROKEN`
//! with what the runner saw. Where QEMU will not migrate the L1 (stock
//! amd-iommu), and with `--share-boots`, one boot takes tests in order
//! until one takes L1 down, and a fresh boot goes on with the next test, the
//! way cloud-hypervisor re-runs a wedged batch.

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
    /// It broke the boot by stalling on the stock QEMU's lost wakeup
    /// (`runner::ScenarioRun::stalled`).
    pub stalled: bool,
    /// This is a second try in a new L1; the first stalled with this.
    pub retried_after: Option<String>,
}

impl TestRun {
    /// It stalled on the stock QEMU's lost wakeup and gets one more try.
    fn to_retry(&self) -> bool {
        self.stalled && self.retried_after.is_none()
    }
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
    /// One per L1 started: a boot, or a restore (then one per test).
    pub boots: Vec<BootInfo>,
    /// The saved state each test's L1 was restored from, and the boot and
    /// save times when this run saved it.
    pub restored_from: Option<(PathBuf, Option<(Duration, Duration)>)>,
    /// Why the tests shared boots where each would have started from a
    /// restored L1.
    pub shared_because: Option<String>,
    /// The first boot never reached the agent: the kernel cannot be
    /// tested here (exit 125).
    pub no_boot: Option<String>,
}

/// Runs `tests` in as few boots as they allow. `config(n)` gives boot n's
/// configuration (its own log directory and sockets).
///
/// With `restore` (the cache of saved states), each test runs in an L1
/// restored from the state of `config(0)`'s L1 (saved first if the cache
/// lacks it; its boot logs under `save/` beside `config(0)`'s), test n's
/// logs where `config(n)` puts them. Where the L1 cannot be saved the tests
/// share boots as without `restore`, and `Runs::shared_because` says why.
pub async fn run_tests(
    config: &(dyn Fn(usize) -> Result<BootConfig, String> + Sync),
    tests: &[TestJob],
    timeouts: Timeouts,
    restore: Option<&images::Cache>,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Runs {
    let mut runs = Runs::default();
    // a booted L1 the shared boots go on in (the saving boot, unmigratable)
    let mut booted = None;
    if let Some(cache) = restore {
        match run_restored(cache, config, tests, timeouts, &mut runs, on_event).await {
            None => return runs,
            Some((reason, session)) => {
                runs.shared_because = Some(reason);
                booted = session;
            }
        }
    }
    // every boot of one run has the same variant
    let variant = config(0).map(|c| c.variant.name).unwrap_or_default();
    let mut next = 0;
    // the failure of a test that stalled, tried once more at the next boot
    let mut retrying: Option<String> = None;
    while next < tests.len() {
        let index = runs.boots.len();
        let (started, outcome) = match booted.take() {
            Some((session, outcome)) => (Ok(session), outcome),
            None => {
                let cfg = match config(index) {
                    Ok(c) => c,
                    Err(e) => {
                        not_run(&mut runs, &tests[next..], index, &e);
                        break;
                    }
                };
                let mut outcome = BootOutcome::new(&cfg);
                let started = Session::start(&cfg, timeouts, &mut outcome, on_event).await;
                (started, outcome)
            }
        };
        runs.boots.push(boot_info(&outcome));
        let mut session = match started {
            Ok(s) => s,
            Err(failure) => {
                let why = format!("L1 did not boot to the agent: {}", failure.message);
                if index == 0 {
                    runs.no_boot = Some(why.clone());
                }
                let first = runs.tests.len();
                not_run(&mut runs, &tests[next..], index, &why);
                // a stalled test whose second boot never came up keeps why it was tried again
                if let (Some(stalled), Some(t)) = (retrying.take(), runs.tests.get_mut(first)) {
                    t.retried_after = Some(stalled);
                }
                break;
            }
        };
        let count_events = avic_events(&outcome);
        let mut ended_by = None;
        while next < tests.len() {
            let test = &tests[next];
            next += 1;
            on_event(RunEvent::TestStarted {
                variant,
                test: test.name.clone(),
            });
            let mut run = run_one(&mut session, test, index, timeouts, &count_events).await;
            run.retried_after = retrying.take();
            let broke = run.broken.clone();
            if run.to_retry() {
                // the stock QEMU's lost wakeup: this test again, first in a new boot
                next -= 1;
                on_event(RunEvent::Retrying {
                    variant,
                    scenario: test.name.clone(),
                    why: broke.clone().unwrap_or_default(),
                });
                retrying = broke.clone();
            } else {
                runs.tests.push(run);
            }
            if let Some(why) = broke {
                ended_by = Some(why);
                break;
            }
        }
        match ended_by {
            // dropping the session kills what is left of QEMU
            Some(_) => drop(session),
            None => {
                on_event(RunEvent::PoweringOff { variant });
                let _ = session.poweroff().await;
            }
        }
    }
    runs
}

fn boot_info(outcome: &BootOutcome) -> BootInfo {
    BootInfo {
        qemu_version: outcome.qemu_version.clone(),
        platform: outcome.ready.as_ref().map(|r| r.platform.clone()),
        console_log: outcome.console_log.clone(),
        boot_to_ready: outcome.timings.boot_to_ready,
    }
}

/// KVM's AVIC events exist where kvm_amd runs L1's guests: count them there.
fn avic_events(outcome: &BootOutcome) -> Vec<String> {
    let kvm_amd = outcome
        .ready
        .as_ref()
        .and_then(|r| r.platform.kvm_vendor.as_deref())
        == Some("kvm_amd");
    if kvm_amd {
        super::avic::EVENTS.iter().map(|e| e.to_string()).collect()
    } else {
        Vec::new()
    }
}

/// Each test from a freshly restored L1. `None`: every test has its run
/// (or why it never ran); else why restore is impossible here, with the
/// saving boot's L1 when it is up and the tests can go on in it.
async fn run_restored(
    cache: &images::Cache,
    config: &(dyn Fn(usize) -> Result<BootConfig, String> + Sync),
    tests: &[TestJob],
    timeouts: Timeouts,
    runs: &mut Runs,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Option<(String, Option<(Session, BootOutcome)>)> {
    use crate::restore::{self, Obtained, Restore};
    let base = match config(0) {
        Ok(c) => c,
        Err(e) => {
            not_run(runs, tests, 0, &e);
            return None;
        }
    };
    let mut state = match restore::obtain_state(cache, &base, timeouts, on_event).await {
        Obtained::State(state, saved) => {
            runs.restored_from = Some((state.dir.clone(), saved));
            state
        }
        Obtained::Blocked(session, outcome, reason) => {
            return Some((
                format!("QEMU cannot migrate this L1: {reason}"),
                Some((*session, outcome)),
            ))
        }
        Obtained::Failed(outcome) => {
            let failure = outcome.failure.clone().unwrap_or(runner::Failure {
                message: "the saving boot failed".into(),
                before_ready: true,
            });
            if !failure.before_ready {
                // L1 booted; only the save failed: boots will do
                return Some((format!("saving the L1 state: {}", failure.message), None));
            }
            runs.boots.push(boot_info(&outcome));
            let why = format!("L1 did not boot to the agent: {}", failure.message);
            runs.no_boot = Some(why.clone());
            not_run(runs, tests, 0, &why);
            return None;
        }
    };
    let variant = base.variant.name;
    let mut resaved = false;
    for (n, test) in tests.iter().enumerate() {
        let cfg = match config(n) {
            Ok(c) => c,
            Err(e) => {
                not_run(runs, &tests[n..], n, &e);
                break;
            }
        };
        let mut outcome = BootOutcome::new(&cfg);
        let mut session = restore::restore_undisturbed(
            &cfg,
            &state,
            timeouts,
            &mut outcome,
            on_event,
            &test.name,
        )
        .await;
        if let (Err(Restore::BadState(why)), false) = (&session, resaved) {
            // once per run: a second bad state is not the cache's fault
            resaved = true;
            session =
                match restore::save_afresh(cache, &base, &state, why, timeouts, on_event).await {
                    Obtained::State(fresh, saved) => {
                        runs.restored_from = Some((fresh.dir.clone(), saved));
                        state = fresh;
                        outcome = BootOutcome::new(&cfg);
                        restore::restore_undisturbed(
                            &cfg,
                            &state,
                            timeouts,
                            &mut outcome,
                            on_event,
                            &test.name,
                        )
                        .await
                    }
                    Obtained::Blocked(s, _, reason) => {
                        s.quit().await;
                        Err(Restore::Failed(format!(
                            "saving afresh: migration blocked: {reason}"
                        )))
                    }
                    Obtained::Failed(o) => Err(Restore::Failed(format!(
                        "saving afresh: {}",
                        o.failure
                            .map_or("the saving boot failed".to_owned(), |f| f.message)
                    ))),
                };
        }
        runs.boots.push(boot_info(&outcome));
        match session {
            Ok(mut session) => {
                on_event(RunEvent::TestStarted {
                    variant,
                    test: test.name.clone(),
                });
                let mut run =
                    run_one(&mut session, test, n, timeouts, &avic_events(&outcome)).await;
                // broken or not, this L1 is thrown away: no shutdown inside it
                session.quit().await;
                if run.to_retry() {
                    let why = run.broken.clone().unwrap_or_default();
                    on_event(RunEvent::Retrying {
                        variant,
                        scenario: test.name.clone(),
                        why: why.clone(),
                    });
                    run = retry_restored(&cfg, &state, test, n, timeouts, runs, on_event).await;
                    run.retried_after = Some(why);
                }
                runs.tests.push(run);
            }
            Err(Restore::BadState(why) | Restore::Disturbed(why) | Restore::Failed(why)) => {
                runs.tests.push(TestRun {
                    name: test.name.clone(),
                    broken: Some(format!("the restored L1 did not come up: {why}")),
                    boot: n,
                    ..Default::default()
                })
            }
        }
    }
    None
}

/// Test `n` once more, in an L1 restored from `state` with its logs in
/// `retry/` under test `n`'s; its boot replaces the stalled one's as boot `n`
/// (the stalled try's evidence is named in its failure).
async fn retry_restored(
    cfg: &BootConfig,
    state: &images::L1State,
    test: &TestJob,
    n: usize,
    timeouts: Timeouts,
    runs: &mut Runs,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> TestRun {
    let again = cfg.beside("retry", &format!("t{n}b"));
    let mut outcome = BootOutcome::new(&again);
    let session = crate::restore::restore_undisturbed(
        &again,
        state,
        timeouts,
        &mut outcome,
        on_event,
        &test.name,
    )
    .await;
    runs.boots[n] = boot_info(&outcome);
    match session {
        Ok(mut session) => {
            on_event(RunEvent::TestStarted {
                variant: again.variant.name,
                test: test.name.clone(),
            });
            let run = run_one(&mut session, test, n, timeouts, &avic_events(&outcome)).await;
            session.quit().await;
            run
        }
        Err(
            crate::restore::Restore::BadState(why)
            | crate::restore::Restore::Disturbed(why)
            | crate::restore::Restore::Failed(why),
        ) => TestRun {
            name: test.name.clone(),
            broken: Some(format!("the restored L1 did not come up: {why}")),
            boot: n,
            ..Default::default()
        },
    }
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
                run.stalled = session.stalled_on_stock_qemu();
                break;
            }
        }
    }
    run.wall = started.elapsed();
    run
}
