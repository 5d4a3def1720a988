//! One L1 boot: start QEMU, wait for the agent, run scenarios in sequence,
//! power off. Everything that can go wrong on the way (QEMU exits, the guest
//! panics, the agent goes silent, the agent talks nonsense) ends as a
//! [`Failure`] with a message; QEMU is always reaped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qmp_client::Qmp;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

use crate::qemu::{self, BootConfig, QemuProcess};
use crate::scenario::Scenario;

/// Longest a hot-unplug may take: the guest must release the device and eject it.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(30);

/// Silence from the agent after which (and every such span after) the
/// runner looks for QEMU's lost wakeup ([`crate::lost_wakeup`]).
const PROBE_AFTER: Duration = Duration::from_secs(10);

/// What the runner tells the UI.
#[derive(Debug, Clone)]
pub enum RunEvent {
    QemuStarted {
        variant: &'static str,
        pid: u32,
    },
    AgentReady {
        variant: &'static str,
        after: Duration,
    },
    ScenarioStarted {
        variant: &'static str,
        scenario: String,
        steps: usize,
    },
    StepFinished {
        variant: &'static str,
        scenario: String,
        index: usize,
        action: &'static str,
    },
    ScenarioFinished {
        variant: &'static str,
        scenario: String,
    },
    /// A selftest started in L1 (`testbed selftests`).
    TestStarted {
        variant: &'static str,
        test: String,
    },
    PoweringOff {
        variant: &'static str,
    },
    /// A shared boot broke in `scenario`; the `rest` it did not run get a
    /// new boot.
    BootingForTheRest {
        variant: &'static str,
        scenario: String,
        rest: usize,
    },
    /// `scenario` stalled on the stock QEMU's lost wakeup (`why`, the
    /// failure): it runs once more on a new L1.
    Retrying {
        variant: &'static str,
        scenario: String,
        why: String,
    },
}

impl RunEvent {
    /// The line of its own an event that changes the plan deserves (a new
    /// boot for the rest, a second try), without the variant.
    pub fn notice(&self) -> Option<String> {
        match self {
            RunEvent::BootingForTheRest { scenario, rest, .. } => Some(format!(
                "{scenario} broke the shared boot: a new boot for the {rest} after it"
            )),
            RunEvent::Retrying { scenario, why, .. } => Some(format!(
                "{scenario}: {}\n  on the stock QEMU: once more on a new L1",
                why.lines().next().unwrap_or_default()
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From QEMU start to the agent's Ready.
    pub boot: Duration,
    /// Longest silence from the agent while a scenario runs.
    pub step: Duration,
    /// From Poweroff to QEMU's exit.
    pub shutdown: Duration,
}

/// Wall time of one boot's phases.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Spawn to QMP negotiated.
    pub qemu_start: Duration,
    /// QMP negotiated to the agent's Ready.
    pub boot_to_ready: Duration,
    /// One entry per scenario run.
    pub scenarios: Vec<Duration>,
    /// Poweroff to QEMU exit.
    pub shutdown: Duration,
}

/// Why a boot or a scenario did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// Whether the agent ever became ready: before that the kernel "could not
    /// be booted" (exit 125 for bisect), after it the scenario failed.
    pub before_ready: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ScenarioRun {
    pub scenario: String,
    pub steps: Vec<wire::StepReport>,
    pub done: Option<wire::Done>,
    pub failure: Option<String>,
    /// What the IOMMU counted while the scenario ran (from before `Run` to
    /// after `Done`), for variants whose IOMMU posts interrupts; `Err` when
    /// its counters could not be read.
    pub iommu: Option<Result<IommuCounts, String>>,
    /// The intel-iommu's posting counters over the scenario (same window),
    /// for variants whose L1 posts its own MSIs.
    pub vtd_pi: Option<Result<crate::report::VtdPiCounts, String>>,
    /// Wall time of each step as the host saw it: from `Run` (or the
    /// previous step's report) to the step's report.
    pub step_times: Vec<Duration>,
    /// The failure is the stock QEMU's lost wakeup
    /// ([`crate::lost_wakeup`]): L1 stalled through no fault of the kernel
    /// under test. (On the patched QEMU, whose 0018-0019 fix that race, a
    /// stall is a failure like any other: a bug to find.)
    pub stalled: bool,
    /// This is a second try on a new L1; the first stalled with this
    /// failure (its logs stay where the first L1's are).
    pub retried_after: Option<String>,
}

impl ScenarioRun {
    /// The run stalled on QEMU's lost wakeup and gets one more try.
    pub fn to_retry(&self) -> bool {
        self.stalled && self.retried_after.is_none()
    }
}

/// Deltas of the amd-iommu's interrupt counters (read-only QOM properties
/// of qemu-patches/0024 and 0026) over one scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IommuCounts {
    /// `ga-posted`: interrupts posted into a vCPU's vAPIC IRR through a
    /// guest-mode IRTE, whatever followed (the sum of the next three, plus
    /// logged ones lost to a full GA log).
    pub posted: u64,
    /// `ga-posted-running`: IsRun set: the AVIC doorbell rang.
    pub posted_running: u64,
    /// `ga-posted-logged`: IsRun clear, GALogIntr set: a GA log entry (the
    /// wake-up of a blocked vCPU).
    pub posted_logged: u64,
    /// `ga-posted-idle`: IsRun and GALogIntr clear: IRR only, taken at the
    /// next VMRUN.
    pub posted_idle: u64,
    /// `ga-log-overflows`: GA log entries lost because the log was full.
    pub log_overflows: u64,
    /// `ga-doorbell-failed`: doorbells to an APIC ID no CPU has.
    pub doorbell_failed: u64,
    /// `irq-remapped`: interrupts remapped to the L1 (host) APIC, any
    /// source (timers, consoles, the devices' non-posted MSIs).
    pub remapped: u64,
}

impl IommuCounts {
    /// The QOM properties, in field order.
    pub const PROPERTIES: [&'static str; 7] = [
        "ga-posted",
        "ga-posted-running",
        "ga-posted-logged",
        "ga-posted-idle",
        "ga-log-overflows",
        "ga-doorbell-failed",
        "irq-remapped",
    ];

    fn from_values(v: [u64; 7]) -> IommuCounts {
        IommuCounts {
            posted: v[0],
            posted_running: v[1],
            posted_logged: v[2],
            posted_idle: v[3],
            log_overflows: v[4],
            doorbell_failed: v[5],
            remapped: v[6],
        }
    }

    fn values(&self) -> [u64; 7] {
        [
            self.posted,
            self.posted_running,
            self.posted_logged,
            self.posted_idle,
            self.log_overflows,
            self.doorbell_failed,
            self.remapped,
        ]
    }

    /// An intel-iommu's posting counters in these terms (intel-vmx-posted):
    /// posted = PIR bits set; running = those that sent the notification
    /// (a running vCPU takes it as posted-interrupt processing, a blocked
    /// one as KVM's wake-up vector: VT-d cannot tell them apart, so nothing
    /// is "logged"); idle = PIR only (ON already set, or SN set by KVM for a
    /// preempted vCPU). VT-d has no log to overflow; faults count as failed
    /// doorbells (posted nowhere).
    pub fn from_vtd(c: &crate::report::VtdPiCounts) -> IommuCounts {
        IommuCounts {
            posted: c.posted,
            posted_running: c.notified,
            posted_logged: 0,
            posted_idle: c.suppressed + c.outstanding,
            log_overflows: 0,
            doorbell_failed: c.faults,
            remapped: c.remapped,
        }
    }

    /// `self - before`, counter by counter (counters only grow).
    pub fn since(&self, before: &IommuCounts) -> IommuCounts {
        let (a, b) = (self.values(), before.values());
        IommuCounts::from_values(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }
}

/// What counters counted between two readings (`since(after, before)`), or
/// why that is not known.
fn counted<T>(
    before: Result<T, String>,
    after: Option<Result<T, String>>,
    since: fn(&T, &T) -> T,
) -> Result<T, String> {
    match (before, after) {
        (Ok(b), Some(Ok(a))) => Ok(since(&a, &b)),
        (Err(e), _) | (_, Some(Err(e))) => Err(e),
        (Ok(_), None) => Err("the IOMMU's counters went away".into()),
    }
}

#[derive(Debug)]
pub struct BootOutcome {
    pub ready: Option<wire::Ready>,
    pub qemu_version: String,
    pub timings: Timings,
    pub runs: Vec<ScenarioRun>,
    pub failure: Option<Failure>,
    pub console_log: PathBuf,
    /// The index in [`Self::runs`] of the scenario whose failure ended a
    /// shared boot (those after it are marked not run).
    pub broken_at: Option<usize>,
}

impl BootOutcome {
    /// Nothing happened yet.
    pub(crate) fn new(cfg: &BootConfig) -> BootOutcome {
        BootOutcome {
            ready: None,
            qemu_version: String::new(),
            timings: Timings::default(),
            runs: Vec::new(),
            failure: None,
            console_log: cfg.console_log.clone(),
            broken_at: None,
        }
    }
}

/// Boot once and run `scenarios` in order. Never returns with QEMU running.
pub async fn run_boot(
    cfg: &BootConfig,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> BootOutcome {
    let mut outcome = BootOutcome::new(cfg);
    let session = match Session::start(cfg, timeouts, &mut outcome, on_event).await {
        Ok(session) => session,
        Err(failure) => {
            outcome.failure = Some(failure);
            return outcome;
        }
    };
    run_in_session(session, outcome, scenarios, on_event).await
}

/// Run `scenarios` in order in a ready session, then power off.
pub(crate) async fn run_in_session(
    mut session: Session,
    mut outcome: BootOutcome,
    scenarios: &[&Scenario],
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> BootOutcome {
    let variant = session.variant;
    for (i, scenario) in scenarios.iter().enumerate() {
        let run = session
            .run_timed(scenario, &mut outcome.timings, on_event)
            .await;
        let broken = run.failure.clone();
        outcome.runs.push(run);
        if let Some(message) = broken {
            // The boot is unusable; say so for every scenario that did not run.
            for rest in &scenarios[i + 1..] {
                outcome.runs.push(ScenarioRun {
                    scenario: rest.name.clone(),
                    failure: Some(format!(
                        "not run: an earlier scenario broke the boot ({message})"
                    )),
                    ..Default::default()
                });
            }
            outcome.failure = Some(Failure {
                message,
                before_ready: false,
            });
            outcome.broken_at = Some(i);
            return outcome;
        }
    }
    on_event(RunEvent::PoweringOff { variant });
    let started = Instant::now();
    if let Err(message) = session.poweroff().await {
        outcome.failure = Some(Failure {
            message,
            before_ready: false,
        });
    }
    outcome.timings.shutdown = started.elapsed();
    outcome
}

/// A shared boot that broke leaves the scenarios after the one that broke
/// it not run: they get a new boot, and so on after each break, so one
/// scenario (or one emulator hiccup) costs the others a boot, not their
/// results. A scenario that broke it by stalling on the stock QEMU's lost
/// wakeup ([`ScenarioRun::to_retry`]) runs once more first, at the head of
/// the new boot, its run there saying why (`retried_after`); the stalled
/// run itself is dropped, its logs stay with its boot. Each new boot logs
/// in `rest-<n>-<scenario>/` beside the first, `n` being its first
/// scenario's place in `scenarios`. Every scenario ends up in exactly one
/// outcome's runs.
pub(crate) async fn rest_on_new_boots(
    cfg: &BootConfig,
    first: BootOutcome,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Vec<BootOutcome> {
    let mut outcomes = vec![first];
    let mut start = 0;
    while let Some(last) = outcomes.last_mut() {
        let Some(broke) = last.broken_at else { break };
        let retry = last
            .runs
            .get(broke)
            .filter(|r| r.to_retry())
            .and_then(|r| r.failure.clone());
        let next = start + broke + usize::from(retry.is_none());
        if next >= scenarios.len() {
            break;
        }
        last.runs.truncate(broke + usize::from(retry.is_none()));
        match &retry {
            Some(why) => on_event(RunEvent::Retrying {
                variant: cfg.variant.name,
                scenario: scenarios[next].name.clone(),
                why: why.clone(),
            }),
            None => on_event(RunEvent::BootingForTheRest {
                variant: cfg.variant.name,
                scenario: scenarios[next - 1].name.clone(),
                rest: scenarios.len() - next,
            }),
        }
        let rest = cfg.beside(
            &format!("rest-{next}-{}", scenarios[next].name),
            &format!("rest{next}"),
        );
        let mut outcome = run_boot(&rest, &scenarios[next..], timeouts, on_event).await;
        if outcome.runs.is_empty() {
            let why = outcome
                .failure
                .as_ref()
                .map_or("the guest did not boot", |f| f.message.as_str())
                .to_owned();
            outcome.runs = scenarios[next..]
                .iter()
                .map(|s| ScenarioRun {
                    scenario: s.name.clone(),
                    failure: Some(format!("not run: the boot for the rest failed ({why})")),
                    ..Default::default()
                })
                .collect();
        }
        if let (Some(why), Some(run)) = (retry, outcome.runs.first_mut()) {
            run.retried_after = Some(why);
        }
        outcomes.push(outcome);
        start = next;
    }
    outcomes
}

/// The outcome among `outcomes` (one L1's each) that ran `scenario`, else
/// the first: the one whose failure kept it from running.
pub fn outcome_of<'a>(outcomes: &'a [BootOutcome], scenario: &str) -> &'a BootOutcome {
    outcomes
        .iter()
        .find(|o| o.runs.iter().any(|r| r.scenario == scenario))
        .unwrap_or(&outcomes[0])
}

/// A running L1 whose agent said Ready. Dropping it kills QEMU.
pub(crate) struct Session {
    qemu: QemuProcess,
    qmp: Qmp,
    events: tokio::sync::mpsc::UnboundedReceiver<qapi::qmp::Event>,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    bdfs: HashMap<String, String>,
    /// The boot's devices, for putting an unplugged one back.
    devices: Vec<qemu::PciDevice>,
    timeouts: Timeouts,
    console_log: PathBuf,
    /// QOM path of the IOMMU whose counters are read around each scenario.
    iommu_counters: Option<&'static str>,
    /// [`Self::iommu_counters`] is an intel-iommu (VT-d's counter names).
    iommu_counters_vtd: bool,
    vtd_counters: Option<&'static str>,
    variant: &'static str,
    /// Set when a wait for the agent ended on a lost wakeup.
    stalled: bool,
    /// The variant runs a stock QEMU, whose lost wakeups are retried.
    stock_qemu: bool,
}

/// Something that ended the wait for the agent.
pub(crate) enum Interrupt {
    Message(wire::AgentMessage),
    Failed(String),
}

/// QEMU started with `args`, QMP negotiated, the agent's socket listening.
pub(crate) struct Launched {
    pub(crate) qemu: QemuProcess,
    pub(crate) qmp: Qmp,
    pub(crate) events: tokio::sync::mpsc::UnboundedReceiver<qapi::qmp::Event>,
    pub(crate) listener: UnixListener,
}

/// Listen on the agent socket, spawn QEMU with `args`, connect QMP (with
/// its transcript beside the console log); records the start-up time and
/// QEMU's version in `outcome`.
pub(crate) async fn launch(
    cfg: &BootConfig,
    args: &[String],
    outcome: &mut BootOutcome,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Result<Launched, Failure> {
    let early = |message: String| Failure {
        message,
        before_ready: true,
    };
    let listener = UnixListener::bind(cfg.agent_socket()).map_err(|e| {
        early(format!(
            "cannot listen on {}: {e}",
            cfg.agent_socket().display()
        ))
    })?;
    let stderr_log = cfg.console_log.with_file_name("qemu-stderr.log");
    let started = Instant::now();
    let mut qemu = QemuProcess::spawn(&cfg.qemu, args, &stderr_log)
        .map_err(|e| early(format!("cannot start {}: {e}", cfg.qemu.display())))?;
    on_event(RunEvent::QemuStarted {
        variant: cfg.variant.name,
        pid: qemu.pid,
    });

    let qmp_socket = cfg.qmp_socket();
    // The QMP transcript sits beside the console log: what QEMU was
    // told and what it reported (events, replies) when a run goes wrong.
    let transcript = cfg.console_log.with_file_name("qmp.log");
    let transcript = std::fs::File::create(&transcript)
        .map_err(|e| early(format!("cannot create {}: {e}", transcript.display())))?;
    let qmp = tokio::select! {
        qmp = Qmp::connect_with_transcript(&qmp_socket, Duration::from_secs(10), Box::new(transcript)) => qmp.map_err(|e| format!("qmp: {e}")),
        status = qemu.wait() => Err(qemu_exit_message(status, &stderr_log, "start-up")),
    };
    let mut qmp = qmp.map_err(early)?;
    let events = qmp
        .take_events()
        .ok_or_else(|| early("qmp: event stream already taken".into()))?;
    outcome.timings.qemu_start = started.elapsed();
    let version = qmp.qemu_version();
    outcome.qemu_version = format!(
        "{}.{}.{}",
        version.qemu.major, version.qemu.minor, version.qemu.micro
    );
    if !version.package.trim().is_empty() {
        outcome
            .qemu_version
            .push_str(&format!(" ({})", version.package.trim()));
    }
    Ok(Launched {
        qemu,
        qmp,
        events,
        listener,
    })
}

impl Session {
    pub(crate) async fn start(
        cfg: &BootConfig,
        timeouts: Timeouts,
        outcome: &mut BootOutcome,
        on_event: &mut (dyn FnMut(RunEvent) + Send),
    ) -> Result<Session, Failure> {
        let early = |message: String| Failure {
            message,
            before_ready: true,
        };
        let started = Instant::now();
        let Launched {
            mut qemu,
            qmp,
            events,
            listener,
        } = launch(cfg, &qemu::qemu_args(cfg), outcome, on_event).await?;
        let stderr_log = cfg.console_log.with_file_name("qemu-stderr.log");

        let mut bdfs = HashMap::new();
        // devices behind root ports have no bus number before the firmware runs
        for device in cfg.devices.iter().filter(|d| !d.hotplug) {
            let address = qmp
                .pci_address(&device.id)
                .await
                .map_err(|e| early(format!("qmp: {e}")))?;
            bdfs.insert(device.id.clone(), address.to_string());
        }

        qmp.execute(qapi::qmp::cont {})
            .await
            .map_err(|e| early(format!("qmp: cont: {e}")))?;
        let ready_at = Instant::now();
        let deadline = tokio::time::Instant::now() + timeouts.boot;
        let stream = tokio::select! {
            accepted = listener.accept() => accepted.map(|(s, _)| s).map_err(|e| format!("agent socket: {e}")),
            status = qemu.wait() => Err(qemu_exit_message(status, &stderr_log, "boot")),
            _ = tokio::time::sleep_until(deadline) => Err("qemu never connected the agent port".to_owned()),
        }
        .map_err(early)?;
        let mut session = Session::connected(
            cfg,
            Launched {
                qemu,
                qmp,
                events,
                listener,
            },
            stream,
            bdfs,
            timeouts,
        );
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match session
            .next_message(remaining, "waiting for the agent to start")
            .await
        {
            Interrupt::Message(wire::AgentMessage::Ready(ready)) => {
                if ready.protocol != wire::PROTOCOL_VERSION {
                    return Err(early(format!(
                        "agent speaks protocol {}, testbed {}",
                        ready.protocol,
                        wire::PROTOCOL_VERSION
                    )));
                }
                outcome.timings.boot_to_ready = ready_at.elapsed();
                // Behind a root port a device's bus number is what the
                // guest's firmware programmed into the port: ask again now.
                for device in session.devices.iter().filter(|d| d.hotplug) {
                    let address = session
                        .qmp
                        .pci_address(&device.id)
                        .await
                        .map_err(|e| early(format!("qmp: {e}")))?;
                    session.bdfs.insert(device.id.clone(), address.to_string());
                }
                on_event(RunEvent::AgentReady {
                    variant: cfg.variant.name,
                    after: started.elapsed(),
                });
                outcome.ready = Some(ready);
                Ok(session)
            }
            Interrupt::Message(other) => Err(early(format!(
                "agent: expected ready, got {}",
                message_kind(&other)
            ))),
            Interrupt::Failed(message) => Err(early(message)),
        }
    }

    /// A session on `launched`'s QEMU whose agent connected on `stream`.
    pub(crate) fn connected(
        cfg: &BootConfig,
        launched: Launched,
        stream: tokio::net::UnixStream,
        bdfs: HashMap<String, String>,
        timeouts: Timeouts,
    ) -> Session {
        let (read, writer) = stream.into_split();
        Session {
            qemu: launched.qemu,
            qmp: launched.qmp,
            events: launched.events,
            lines: BufReader::new(read).lines(),
            writer,
            bdfs,
            devices: cfg.devices.clone(),
            timeouts,
            console_log: cfg.console_log.clone(),
            iommu_counters: cfg.variant.iommu_counters(),
            iommu_counters_vtd: cfg.variant.iommu_counters_are_vtd(),
            vtd_counters: cfg.variant.vtd_counters(),
            variant: cfg.variant.name,
            stalled: false,
            stock_qemu: cfg.variant.qemu == crate::variant::QemuKind::Stock,
        }
    }

    pub(crate) fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The last wait for the agent ended on a lost wakeup, and this is a
    /// stock QEMU, whose lost wakeups get a second try
    /// ([`ScenarioRun::stalled`]).
    pub(crate) fn stalled_on_stock_qemu(&self) -> bool {
        self.stalled && self.stock_qemu
    }

    /// End QEMU without a guest shutdown (the guest's state is thrown away):
    /// QMP `quit`, else kill.
    pub(crate) async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.qmp.execute(qapi::qmp::quit {}))
            .await;
        let _ = self.qemu.finish(Duration::from_secs(5)).await;
    }

    /// [`Self::run_scenario`] between `ScenarioStarted` and
    /// `ScenarioFinished`, its wall time added to `timings`.
    pub(crate) async fn run_timed(
        &mut self,
        scenario: &Scenario,
        timings: &mut Timings,
        on_event: &mut (dyn FnMut(RunEvent) + Send),
    ) -> ScenarioRun {
        let variant = self.variant;
        on_event(RunEvent::ScenarioStarted {
            variant,
            scenario: scenario.name.clone(),
            steps: scenario.steps.len(),
        });
        let started = Instant::now();
        let run = self.run_scenario(scenario, variant, on_event).await;
        timings.scenarios.push(started.elapsed());
        on_event(RunEvent::ScenarioFinished {
            variant,
            scenario: scenario.name.clone(),
        });
        run
    }

    pub(crate) async fn run_scenario(
        &mut self,
        scenario: &Scenario,
        variant: &'static str,
        on_event: &mut (dyn FnMut(RunEvent) + Send),
    ) -> ScenarioRun {
        let mut run = ScenarioRun {
            scenario: scenario.name.clone(),
            ..Default::default()
        };
        let job = scenario.job(&self.bdfs);
        // The agent does not pause between steps, so the IOMMU is read
        // around the whole scenario; nothing else posts interrupts meanwhile.
        let before = self.read_iommu().await;
        let vtd_before = self.read_vtd().await;
        if self.send(&wire::HostMessage::Run(job)).await.is_err() {
            // A write fails when QEMU is gone; say why it is gone, not EPIPE.
            run.failure = Some(self.gone("the start of the scenario").await);
            return run;
        }
        let mut last = Instant::now();
        loop {
            let what = match run.steps.len() {
                n if n < scenario.steps.len() => {
                    format!("step {} ({})", n + 1, scenario.steps[n].action())
                }
                _ => "cleanup".to_owned(),
            };
            match self.next_message(self.timeouts.step, &what).await {
                Interrupt::Message(wire::AgentMessage::Step(report)) => {
                    if report.index != run.steps.len() || report.index >= scenario.steps.len() {
                        run.failure = Some(format!(
                            "agent reported step {} while {} was expected",
                            report.index + 1,
                            run.steps.len() + 1
                        ));
                        return run;
                    }
                    on_event(RunEvent::StepFinished {
                        variant,
                        scenario: scenario.name.clone(),
                        index: report.index,
                        action: scenario.steps[report.index].action(),
                    });
                    run.steps.push(report);
                    run.step_times.push(last.elapsed());
                    last = Instant::now();
                }
                Interrupt::Message(wire::AgentMessage::Progress { .. }) => continue,
                Interrupt::Message(wire::AgentMessage::HostAction { index, action }) => {
                    let fits = match (&action, scenario.steps.get(index)) {
                        (
                            wire::HostAction::IommuPosted,
                            Some(wire::Step::L2Traffic { .. } | wire::Step::L2Link { .. }),
                        ) => true,
                        (wire::HostAction::IommuPosted, _) => false,
                        (
                            wire::HostAction::SetLink { device, .. },
                            Some(wire::Step::L2Link { device: d, .. }),
                        ) => device == d,
                        (wire::HostAction::SetLink { .. }, _) => false,
                        (_, step) => matches!(
                            step,
                            Some(wire::Step::Unplug { .. } | wire::Step::Replug { .. })
                        ),
                    };
                    if index != run.steps.len() || !fits {
                        run.failure = Some(format!(
                            "agent asked for {action:?} during step {}",
                            index + 1
                        ));
                        return run;
                    }
                    let (error, posted) = match action {
                        wire::HostAction::IommuPosted => match self.read_iommu().await {
                            None => (None, None),
                            Some(Ok(c)) => (None, Some(c.posted)),
                            Some(Err(e)) => (Some(e), None),
                        },
                        _ => (self.host_action(&action).await.err(), None),
                    };
                    if self
                        .send(&wire::HostMessage::HostActionDone { error, posted })
                        .await
                        .is_err()
                    {
                        run.failure = Some(self.gone(&what).await);
                        return run;
                    }
                }
                Interrupt::Message(wire::AgentMessage::Done(done)) => {
                    run.done = Some(done);
                    if let Some(before) = before {
                        run.iommu =
                            Some(counted(before, self.read_iommu().await, IommuCounts::since));
                    }
                    if let Some(before) = vtd_before {
                        run.vtd_pi = Some(counted(
                            before,
                            self.read_vtd().await,
                            crate::report::VtdPiCounts::since,
                        ));
                    }
                    return run;
                }
                Interrupt::Message(wire::AgentMessage::Failed { message }) => {
                    run.failure = Some(format!("agent: {message}"));
                    return run;
                }
                Interrupt::Message(wire::AgentMessage::Ready(_)) => {
                    run.failure = Some("agent restarted in the middle of a scenario".to_owned());
                    return run;
                }
                Interrupt::Message(
                    other @ (wire::AgentMessage::ExecOutput { .. }
                    | wire::AgentMessage::Exited(_)
                    | wire::AgentMessage::ScalingPoint(_)
                    | wire::AgentMessage::ScalingDone(_)),
                ) => {
                    run.failure = Some(format!(
                        "agent sent {} during a scenario",
                        message_kind(&other)
                    ));
                    return run;
                }
                Interrupt::Failed(message) => {
                    run.failure = Some(message);
                    run.stalled = self.stalled_on_stock_qemu();
                    return run;
                }
            }
        }
    }

    /// The PCI address in L1 of the boot's device `id`, as QMP reported it.
    pub(crate) fn bdf(&self, id: &str) -> Option<&str> {
        self.bdfs.get(id).map(String::as_str)
    }

    /// The IOMMU's counters, where the variant has some to read.
    async fn read_iommu(&self) -> Option<Result<IommuCounts, String>> {
        let path = self.iommu_counters?;
        if self.iommu_counters_vtd {
            return Some(
                self.read_counters(path, crate::report::VtdPiCounts::PROPERTIES)
                    .await
                    .map(|v| IommuCounts::from_vtd(&crate::report::VtdPiCounts::from_values(v))),
            );
        }
        Some(
            self.read_counters(path, IommuCounts::PROPERTIES)
                .await
                .map(IommuCounts::from_values),
        )
    }

    /// The intel-iommu's posting counters, where the variant posts L1's MSIs.
    async fn read_vtd(&self) -> Option<Result<crate::report::VtdPiCounts, String>> {
        let path = self.vtd_counters?;
        Some(
            self.read_counters(path, crate::report::VtdPiCounts::PROPERTIES)
                .await
                .map(crate::report::VtdPiCounts::from_values),
        )
    }

    /// Integer QOM properties of the object at `path`, in order.
    async fn read_counters<const N: usize>(
        &self,
        path: &str,
        properties: [&str; N],
    ) -> Result<[u64; N], String> {
        let mut values = [0u64; N];
        for (value, property) in values.iter_mut().zip(properties) {
            let cmd = qapi::qmp::qom_get {
                path: path.to_owned(),
                property: property.to_owned(),
            };
            let got =
                match tokio::time::timeout(Duration::from_secs(10), self.qmp.execute(cmd)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return Err(format!("qom-get {path} {property}: {e}")),
                    Err(_) => return Err(format!("qom-get {path} {property}: no answer in 10 s")),
                };
            match got.as_u64() {
                Some(v) => *value = v,
                None => return Err(format!("qom-get {path} {property}: not a number: {got}")),
            }
        }
        Ok(values)
    }

    pub(crate) async fn poweroff(mut self) -> Result<(), String> {
        self.send(&wire::HostMessage::Poweroff).await?;
        match tokio::time::timeout(self.timeouts.shutdown, self.qemu.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("waiting for qemu: {e}")),
            Err(_) => {
                // Ask politely through QMP, then kill (Drop) if that fails too.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
                let _ = self.qemu.finish(Duration::from_secs(2)).await;
                Err(format!(
                    "guest did not power off within {:?}",
                    self.timeouts.shutdown
                ))
            }
        }
    }

    pub(crate) async fn send(&mut self, message: &wire::HostMessage) -> Result<(), String> {
        let mut line = serde_json::to_vec(message).expect("host messages always serialize");
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| format!("writing to the agent: {e}"))
    }

    /// Run what the agent asked for in the middle of a step. While QEMU waits
    /// for the guest to give up a device, the guest's agent keeps working
    /// (it must close the device), so only QMP is awaited here.
    async fn host_action(&mut self, action: &wire::HostAction) -> Result<(), String> {
        match action {
            wire::HostAction::IommuPosted => Ok(()), // answered by the caller
            wire::HostAction::DeviceDel { device } => self
                .qmp
                .device_del(device, UNPLUG_TIMEOUT)
                .await
                .map_err(|e| format!("device_del {device}: {e}")),
            wire::HostAction::DeviceAdd { device } => {
                let d = self
                    .devices
                    .iter()
                    .find(|d| d.id == *device)
                    .ok_or_else(|| format!("device_add {device}: not a device of this boot"))?;
                if !d.hotplug {
                    return Err(format!(
                        "device_add {device}: it is not on a hot-pluggable root port"
                    ));
                }
                self.qmp
                    .device_add(&d.driver, &d.id, qemu::replug_props(d))
                    .await
                    .map_err(|e| format!("device_add {device}: {e}"))
            }
            wire::HostAction::SetLink { device, up } => {
                let state = if *up { "on" } else { "off" };
                if !self.devices.iter().any(|d| d.id == *device) {
                    return Err(format!(
                        "set_link {device} {state}: not a device of this boot"
                    ));
                }
                let cmd = qapi::qmp::set_link {
                    name: device.clone(),
                    up: *up,
                };
                match tokio::time::timeout(Duration::from_secs(10), self.qmp.execute(cmd)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("set_link {device} {state}: {e}")),
                    Err(_) => Err(format!("set_link {device} {state}: no answer in 10 s")),
                }
            }
        }
    }

    /// The agent's next message, or why none will come.
    pub(crate) async fn next_message(&mut self, timeout: Duration, what: &str) -> Interrupt {
        let since = Instant::now();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let probe = tokio::time::sleep(PROBE_AFTER);
        tokio::pin!(probe);
        let mut probing = timeout > PROBE_AFTER;
        loop {
            tokio::select! {
                line = self.lines.next_line() => {
                    return match line {
                        Ok(Some(line)) if line.trim().is_empty() => continue,
                        Ok(Some(line)) => match serde_json::from_str::<wire::AgentMessage>(&line) {
                            Ok(message) => Interrupt::Message(message),
                            Err(e) => Interrupt::Failed(format!(
                                "agent sent a malformed message ({e}): {}",
                                truncate(&line, 200)
                            )),
                        },
                        Ok(None) => Interrupt::Failed(self.gone(what).await),
                        // a reset socket is usually QEMU dying: say that if it did
                        Err(e) => Interrupt::Failed(match self.qemu_gone(what).await {
                            Some(why) => why,
                            None => format!("reading from the agent: {e}"),
                        }),
                    };
                }
                event = self.events.recv() => match event {
                    Some(qapi::qmp::Event::GUEST_PANICKED { .. }) => {
                        return Interrupt::Failed(format!(
                            "guest kernel panicked during {what}{}",
                            console_excerpt(&self.console_log, "Kernel panic")
                        ));
                    }
                    Some(qapi::qmp::Event::SHUTDOWN { data, .. }) => {
                        let how = serde_json::to_value(data.reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_else(|| "unknown reason".to_owned());
                        return Interrupt::Failed(format!(
                            "guest shut down ({how}) during {what}{}",
                            console_evidence(&self.console_log)
                        ));
                    }
                    Some(_) => continue,
                    None => return Interrupt::Failed(self.gone(what).await),
                },
                status = self.qemu.wait() => {
                    if let Some(panic) = self.panic_in_flight(what).await {
                        return Interrupt::Failed(panic);
                    }
                    let stderr_log = self.console_log.with_file_name("qemu-stderr.log");
                    return Interrupt::Failed(qemu_exit_message(status, &stderr_log, what));
                }
                _ = &mut probe, if probing => {
                    match crate::lost_wakeup::probe(&self.qmp, Duration::from_secs(5)).await {
                        Some((stuck, looks)) => {
                            let state = self.write_cpu_state(looks);
                            let message = format!(
                                "L1 stalled: {stuck}; no word from the agent for {}s during {what}{state}",
                                since.elapsed().as_secs()
                            );
                            self.stalled = true;
                            return Interrupt::Failed(message);
                        }
                        None => {
                            let next = tokio::time::Instant::now() + PROBE_AFTER;
                            probing = next < tokio::time::Instant::from_std(since + timeout);
                            probe.as_mut().reset(next);
                        }
                    }
                }
                _ = &mut deadline => {
                    let state = self.dump_cpu_state().await;
                    return Interrupt::Failed(format!(
                        "guest hung: no word from the agent for {}s during {what}{}{state}",
                        timeout.as_secs(),
                        console_evidence(&self.console_log)
                    ));
                }
            }
        }
    }

    /// A hung guest's CPUs as QEMU sees them, beside the console log
    /// (`cpu-state.txt`): registers of every CPU twice, 1 s apart (a RIP
    /// that moves spins, one that stays halts), each CPU's local APIC
    /// (IRR, ISR, timer) and the interrupt controllers; then an NMI, whose
    /// answer goes to the console log. Returns where it
    /// went, for the failure message, or nothing when QMP does not answer.
    async fn dump_cpu_state(&self) -> String {
        let hmp = |command: &str, cpu: Option<i64>| {
            let cmd = qapi::qmp::human_monitor_command {
                cpu_index: cpu,
                command_line: command.to_owned(),
            };
            tokio::time::timeout(Duration::from_secs(10), self.qmp.execute(cmd))
        };
        let mut text = String::new();
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match hmp("info registers -a", None).await {
                Ok(Ok(out)) => text.push_str(&format!("== info registers -a ({round})\n{out}\n")),
                _ => return String::new(),
            }
        }
        for cpu in 0..64 {
            match hmp("info lapic", Some(cpu)).await {
                Ok(Ok(out)) => text.push_str(&format!("== info lapic (cpu {cpu})\n{out}\n")),
                _ => break,
            }
        }
        for command in ["info pic", "info irq"] {
            if let Ok(Ok(out)) = hmp(command, None).await {
                text.push_str(&format!("== {command}\n{out}\n"));
            }
        }
        // An NMI makes a live kernel say something on its console; with
        // `unknown_nmi_panic=1 panic_print=0x40` on its command line it
        // panics with every CPU's backtrace, symbolized by the kernel.
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(5),
            self.qmp.execute(qapi::qmp::inject_nmi {}),
        )
        .await
        {
            text.push_str("== inject-nmi sent; the console log has the guest's answer, if any\n");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        self.write_cpu_state(text)
    }

    /// Writes `text` to `cpu-state.txt` beside the console log; returns
    /// where, for a failure message, or nothing when it could not.
    fn write_cpu_state(&self, text: String) -> String {
        let path = self.console_log.with_file_name("cpu-state.txt");
        match std::fs::write(&path, text) {
            Ok(()) => format!("\n    CPU state: {}", path.display()),
            Err(_) => String::new(),
        }
    }

    /// QEMU is gone: did it report a guest panic first? Its last events may
    /// still be on their way through the QMP reader, which ends at EOF.
    async fn panic_in_flight(&mut self, what: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let qapi::qmp::Event::GUEST_PANICKED { .. } = event {
                return Some(format!(
                    "guest kernel panicked during {what}{}",
                    console_excerpt(&self.console_log, "Kernel panic")
                ));
            }
        }
        None
    }

    /// The channel closed: find out whether QEMU died and how.
    pub(crate) async fn gone(&mut self, what: &str) -> String {
        match self.qemu_gone(what).await {
            Some(why) => why,
            None => format!(
                "the agent closed its port during {what}{}",
                console_evidence(&self.console_log)
            ),
        }
    }

    /// How QEMU went, if it reported a guest panic or exits within 2 s.
    async fn qemu_gone(&mut self, what: &str) -> Option<String> {
        if let Some(panic) = self.panic_in_flight(what).await {
            return Some(panic);
        }
        let stderr_log = self.console_log.with_file_name("qemu-stderr.log");
        let status = tokio::time::timeout(Duration::from_secs(2), self.qemu.wait())
            .await
            .ok()?;
        Some(qemu_exit_message(status, &stderr_log, what))
    }
}

pub(crate) fn message_kind(message: &wire::AgentMessage) -> &'static str {
    match message {
        wire::AgentMessage::Ready(_) => "ready",
        wire::AgentMessage::Step(_) => "step",
        wire::AgentMessage::Progress { .. } => "progress",
        wire::AgentMessage::HostAction { .. } => "host action",
        wire::AgentMessage::Done(_) => "done",
        wire::AgentMessage::Failed { .. } => "failed",
        wire::AgentMessage::ExecOutput { .. } => "exec output",
        wire::AgentMessage::Exited(_) => "exited",
        wire::AgentMessage::ScalingPoint(_) | wire::AgentMessage::ScalingDone(_) => {
            "scaling result"
        }
    }
}

/// "qemu exited unexpectedly (how) during what: its stderr", then the
/// kernel's panic line if the console has one.
pub(crate) fn qemu_exit_message(
    status: std::io::Result<std::process::ExitStatus>,
    stderr_log: &std::path::Path,
    what: &str,
) -> String {
    let how = match status {
        Ok(status) => qemu::describe_exit(status),
        Err(e) => format!("unknown status ({e})"),
    };
    let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
    let stderr = stderr.trim();
    let console = stderr_log.with_file_name("console.log");
    let panic = console_excerpt(&console, "Kernel panic");
    if stderr.is_empty() {
        format!("qemu exited unexpectedly ({how}) during {what}{panic}")
    } else {
        format!(
            "qemu exited unexpectedly ({how}) during {what}: {}{panic}",
            truncate(stderr, 500)
        )
    }
}

/// The console line containing `needle` (e.g. the panic message), if any.
fn console_excerpt(console_log: &std::path::Path, needle: &str) -> String {
    let text = std::fs::read_to_string(console_log).unwrap_or_default();
    match text.lines().find(|l| l.contains(needle)) {
        Some(line) => format!("\n    console: {}", line.trim()),
        None => String::new(),
    }
}

/// What the console says about a failure: the kernel's panic line when
/// there is one (it matters more than whatever followed it), else the tail.
/// A hang often follows a BUG or an oops that did not panic: the last
/// warning headline on the console comes before the tail then.
fn console_evidence(console_log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(console_log).unwrap_or_default();
    match text.lines().find(|l| l.contains("Kernel panic")) {
        Some(panic) => format!("\n    console: {}", panic.trim()),
        None => last_kernel_warning(&text) + &console_tail(&text),
    }
}

/// The console's last kernel warning headlines ([`wire::kernel_warning`]):
/// up to three, since one failure prints several (`list_add corruption`,
/// `kernel BUG at`, `Oops`).
fn last_kernel_warning(text: &str) -> String {
    let message = |line: &str| match line
        .trim_start()
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
    {
        Some((_, message)) => message.to_string(),
        None => line.to_string(),
    };
    let warnings: Vec<String> = text
        .lines()
        .map(message)
        .filter(|m| wire::kernel_warning(m))
        .collect();
    let mut out = String::new();
    for w in &warnings[warnings.len().saturating_sub(3)..] {
        out.push_str("\n    kernel warning on the console: ");
        out.push_str(truncate(w.trim_end(), 160));
    }
    out
}

/// The last lines of the console, to show what the guest was doing.
fn console_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n    console tail:");
    for line in tail {
        out.push_str("\n      ");
        out.push_str(truncate(line.trim_end(), 160));
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_names_the_last_kernel_warnings_then_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(
            &log,
            "[    4.242477] WARNING: CPU: 0 PID: 138 at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free+0x99/0xb0 [kvm_amd]\n\
             [   10.326901] ------------[ cut here ]------------\n\
             [   10.326950] list_add corruption. prev->next should be next (ffff888006eab890), but was ffff888006ea9cb0.\n\
             [   10.326991] kernel BUG at lib/list_debug.c:29!\n\
             [   10.327747] Oops: invalid opcode: 0000 [#1] SMP NOPTI\n\
             [   10.327800] RIP: 0010:__list_add_valid_or_report+0x5c/0xa0\n",
        )
        .unwrap();
        let evidence = console_evidence(&log);
        let lines: Vec<&str> = evidence.lines().map(str::trim).collect();
        assert!(
            lines[1].starts_with("kernel warning on the console: list_add corruption."),
            "{evidence}"
        );
        assert_eq!(
            lines[2],
            "kernel warning on the console: kernel BUG at lib/list_debug.c:29!"
        );
        assert_eq!(
            lines[3],
            "kernel warning on the console: Oops: invalid opcode: 0000 [#1] SMP NOPTI"
        );
        assert_eq!(lines[4], "console tail:");
        assert!(
            !evidence.contains("svm_vcpu_free"),
            "only the last three: {evidence}"
        );
    }
}
