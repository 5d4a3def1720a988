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

/// What the runner tells the UI.
#[derive(Debug, Clone)]
pub enum RunEvent {
    QemuStarted { variant: &'static str, pid: u32 },
    AgentReady { variant: &'static str, after: Duration },
    ScenarioStarted { variant: &'static str, scenario: String, steps: usize },
    StepFinished { variant: &'static str, scenario: String, index: usize, action: &'static str },
    ScenarioFinished { variant: &'static str, scenario: String },
    PoweringOff { variant: &'static str },
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

#[derive(Debug, Clone)]
pub struct ScenarioRun {
    pub scenario: String,
    pub steps: Vec<wire::StepReport>,
    pub done: Option<wire::Done>,
    pub failure: Option<String>,
}

#[derive(Debug)]
pub struct BootOutcome {
    pub ready: Option<wire::Ready>,
    pub qemu_version: String,
    pub timings: Timings,
    pub runs: Vec<ScenarioRun>,
    pub failure: Option<Failure>,
    pub console_log: PathBuf,
}

/// Boot once and run `scenarios` in order. Never returns with QEMU running.
pub async fn run_boot(
    cfg: &BootConfig,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> BootOutcome {
    let mut outcome = BootOutcome {
        ready: None,
        qemu_version: String::new(),
        timings: Timings::default(),
        runs: Vec::new(),
        failure: None,
        console_log: cfg.console_log.clone(),
    };
    let mut session = match Session::start(cfg, timeouts, &mut outcome, on_event).await {
        Ok(session) => session,
        Err(failure) => {
            outcome.failure = Some(failure);
            return outcome;
        }
    };
    let variant = cfg.variant.name;
    for (i, scenario) in scenarios.iter().enumerate() {
        on_event(RunEvent::ScenarioStarted {
            variant,
            scenario: scenario.name.clone(),
            steps: scenario.steps.len(),
        });
        let started = Instant::now();
        let run = session.run_scenario(scenario, variant, on_event).await;
        outcome.timings.scenarios.push(started.elapsed());
        on_event(RunEvent::ScenarioFinished { variant, scenario: scenario.name.clone() });
        let broken = run.failure.clone();
        outcome.runs.push(run);
        if let Some(message) = broken {
            // The boot is unusable; say so for every scenario that did not run.
            for rest in &scenarios[i + 1..] {
                outcome.runs.push(ScenarioRun {
                    scenario: rest.name.clone(),
                    steps: Vec::new(),
                    done: None,
                    failure: Some(format!("not run: an earlier scenario broke the boot ({message})")),
                });
            }
            outcome.failure = Some(Failure { message, before_ready: false });
            return outcome;
        }
    }
    on_event(RunEvent::PoweringOff { variant });
    let started = Instant::now();
    if let Err(message) = session.poweroff().await {
        outcome.failure = Some(Failure { message, before_ready: false });
    }
    outcome.timings.shutdown = started.elapsed();
    outcome
}

struct Session {
    qemu: QemuProcess,
    qmp: Qmp,
    events: tokio::sync::mpsc::UnboundedReceiver<qapi::qmp::Event>,
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    bdfs: HashMap<String, String>,
    timeouts: Timeouts,
    console_log: PathBuf,
}

/// Something that ended the wait for the agent.
enum Interrupt {
    Message(wire::AgentMessage),
    Failed(String),
}

impl Session {
    async fn start(
        cfg: &BootConfig,
        timeouts: Timeouts,
        outcome: &mut BootOutcome,
        on_event: &mut (dyn FnMut(RunEvent) + Send),
    ) -> Result<Session, Failure> {
        let early = |message: String| Failure { message, before_ready: true };
        let listener = UnixListener::bind(cfg.agent_socket())
            .map_err(|e| early(format!("cannot listen on {}: {e}", cfg.agent_socket().display())))?;
        let args = qemu::qemu_args(cfg);
        let stderr_log = cfg.console_log.with_file_name("qemu-stderr.log");
        let started = Instant::now();
        let mut qemu = QemuProcess::spawn(&cfg.qemu, &args, &stderr_log)
            .map_err(|e| early(format!("cannot start {}: {e}", cfg.qemu.display())))?;
        on_event(RunEvent::QemuStarted { variant: cfg.variant.name, pid: qemu.pid });

        let qmp_socket = cfg.qmp_socket();
        let qmp = tokio::select! {
            qmp = Qmp::connect(&qmp_socket, Duration::from_secs(10)) => qmp.map_err(|e| format!("qmp: {e}")),
            status = qemu.wait() => Err(qemu_exit_message(status, &stderr_log, "start-up")),
        };
        let mut qmp = qmp.map_err(early)?;
        let events = qmp.take_events().ok_or_else(|| early("qmp: event stream already taken".into()))?;
        outcome.timings.qemu_start = started.elapsed();
        let version = qmp.qemu_version();
        outcome.qemu_version = format!("{}.{}.{}", version.qemu.major, version.qemu.minor, version.qemu.micro);
        if !version.package.trim().is_empty() {
            outcome.qemu_version.push_str(&format!(" ({})", version.package.trim()));
        }

        let mut bdfs = HashMap::new();
        for device in &cfg.devices {
            let address = qmp.pci_address(&device.id).await.map_err(|e| early(format!("qmp: {e}")))?;
            bdfs.insert(device.id.clone(), address.to_string());
        }

        qmp.execute(qapi::qmp::cont {}).await.map_err(|e| early(format!("qmp: cont: {e}")))?;
        let ready_at = Instant::now();
        let deadline = tokio::time::Instant::now() + timeouts.boot;
        let stream = tokio::select! {
            accepted = listener.accept() => accepted.map(|(s, _)| s).map_err(|e| format!("agent socket: {e}")),
            status = qemu.wait() => Err(qemu_exit_message(status, &stderr_log, "boot")),
            _ = tokio::time::sleep_until(deadline) => Err("qemu never connected the agent port".to_owned()),
        }
        .map_err(early)?;
        let (read, writer) = stream.into_split();
        let mut session = Session {
            qemu,
            qmp,
            events,
            lines: BufReader::new(read).lines(),
            writer,
            bdfs,
            timeouts,
            console_log: cfg.console_log.clone(),
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match session.next_message(remaining, "waiting for the agent to start").await {
            Interrupt::Message(wire::AgentMessage::Ready(ready)) => {
                if ready.protocol != wire::PROTOCOL_VERSION {
                    return Err(early(format!(
                        "agent speaks protocol {}, testbed {}",
                        ready.protocol,
                        wire::PROTOCOL_VERSION
                    )));
                }
                outcome.timings.boot_to_ready = ready_at.elapsed();
                on_event(RunEvent::AgentReady { variant: cfg.variant.name, after: started.elapsed() });
                outcome.ready = Some(ready);
                Ok(session)
            }
            Interrupt::Message(other) => Err(early(format!("agent: expected ready, got {}", message_kind(&other)))),
            Interrupt::Failed(message) => Err(early(message)),
        }
    }

    async fn run_scenario(
        &mut self,
        scenario: &Scenario,
        variant: &'static str,
        on_event: &mut (dyn FnMut(RunEvent) + Send),
    ) -> ScenarioRun {
        let mut run = ScenarioRun { scenario: scenario.name.clone(), steps: Vec::new(), done: None, failure: None };
        let job = scenario.job(&self.bdfs);
        if let Err(message) = self.send(&wire::HostMessage::Run(job)).await {
            run.failure = Some(message);
            return run;
        }
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
                }
                Interrupt::Message(wire::AgentMessage::Progress { .. }) => continue,
                Interrupt::Message(wire::AgentMessage::Done(done)) => {
                    run.done = Some(done);
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
                Interrupt::Failed(message) => {
                    run.failure = Some(message);
                    return run;
                }
            }
        }
    }

    async fn poweroff(mut self) -> Result<(), String> {
        self.send(&wire::HostMessage::Poweroff).await?;
        match tokio::time::timeout(self.timeouts.shutdown, self.qemu.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("waiting for qemu: {e}")),
            Err(_) => {
                // Ask politely through QMP, then kill (Drop) if that fails too.
                let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.quit()).await;
                let _ = self.qemu.finish(Duration::from_secs(2)).await;
                Err(format!("guest did not power off within {:?}", self.timeouts.shutdown))
            }
        }
    }

    async fn send(&mut self, message: &wire::HostMessage) -> Result<(), String> {
        let mut line = serde_json::to_vec(message).expect("host messages always serialize");
        line.push(b'\n');
        self.writer.write_all(&line).await.map_err(|e| format!("writing to the agent: {e}"))
    }

    /// The agent's next message, or why none will come.
    async fn next_message(&mut self, timeout: Duration, what: &str) -> Interrupt {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
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
                        Err(e) => Interrupt::Failed(format!("reading from the agent: {e}")),
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
                    let stderr_log = self.console_log.with_file_name("qemu-stderr.log");
                    return Interrupt::Failed(qemu_exit_message(status, &stderr_log, what));
                }
                _ = &mut deadline => {
                    return Interrupt::Failed(format!(
                        "guest hung: no word from the agent for {}s during {what}{}",
                        timeout.as_secs(),
                        console_evidence(&self.console_log)
                    ));
                }
            }
        }
    }

    /// The channel closed: find out whether QEMU died and how.
    async fn gone(&mut self, what: &str) -> String {
        let stderr_log = self.console_log.with_file_name("qemu-stderr.log");
        match tokio::time::timeout(Duration::from_secs(2), self.qemu.wait()).await {
            Ok(status) => qemu_exit_message(status, &stderr_log, what),
            Err(_) => format!("the agent closed its port during {what}{}", console_evidence(&self.console_log)),
        }
    }
}

fn message_kind(message: &wire::AgentMessage) -> &'static str {
    match message {
        wire::AgentMessage::Ready(_) => "ready",
        wire::AgentMessage::Step(_) => "step",
        wire::AgentMessage::Progress { .. } => "progress",
        wire::AgentMessage::Done(_) => "done",
        wire::AgentMessage::Failed { .. } => "failed",
    }
}

/// "qemu exited unexpectedly (how) during what: its stderr", then the
/// kernel's panic line if the console has one.
fn qemu_exit_message(
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
        format!("qemu exited unexpectedly ({how}) during {what}: {}{panic}", truncate(stderr, 500))
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
fn console_evidence(console_log: &std::path::Path) -> String {
    match console_excerpt(console_log, "Kernel panic") {
        panic if !panic.is_empty() => panic,
        _ => console_tail(console_log),
    }
}

/// The last lines of the console, to show what the guest was doing.
fn console_tail(console_log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(console_log).unwrap_or_default();
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
