//! Snapshot restore: boot L1 once per (QEMU, kernel, initramfs, command
//! line, variant, devices, CPUs, memory), stop it when the agent is ready,
//! save it with a QEMU migration to a file (`mapped-ram`: RAM pages at fixed
//! offsets of a sparse file), and start every scenario from a new QEMU that
//! loads that file (`-incoming defer` + `migrate-incoming`). The saved state
//! is a cache entry (`images::l1_state_slot`, published by rename) keyed by
//! everything on QEMU's command line and the identity of every file it reads.
//!
//! After the load the host sends [`wire::HostMessage::Resumed`] on the new
//! agent socket; the agent steps the guest's wall clock, puts back the PCI
//! headers of devices QEMU does not migrate (edu) and answers with a fresh
//! Ready. A state QEMU cannot load (truncated, corrupt) is discarded and
//! saved afresh; a variant with a device QEMU will not migrate (stock
//! amd-iommu is `unmigratable`, so `amd-ir`; the patched QEMU's is not,
//! qemu-patches/0029) runs its scenarios in the saving boot, shared, with
//! QEMU's reason shown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::qemu::{self, BootConfig};
use crate::runner::{
    self, BootOutcome, Failure, Interrupt, RunEvent, ScenarioRun, Session, Timeouts,
};
use crate::scenario::Scenario;

/// Bumped when what a state holds or how it is loaded changes.
pub const STATE_FORMAT: u32 = 1;

/// Longest a save or a load of the migration stream may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the scenarios of a group cannot start from a saved state, known
/// before any boot.
pub fn unsupported(scenarios: &[&Scenario]) -> Option<String> {
    scenarios
        .iter()
        .find(|s| s.needs_l2())
        .map(|s| format!("{} runs a nested L2 (not tried with restore yet)", s.name))
}

/// The cache key of the state a boot of `cfg` would save: its QEMU
/// arguments with the per-boot paths (logs, sockets) left out, and the
/// path, size and modification time of the QEMU binary, kernel and initrd.
pub fn state_key(cfg: &BootConfig) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "l1state {STATE_FORMAT} protocol {}\n",
        wire::PROTOCOL_VERSION
    ));
    for arg in qemu::qemu_args(&neutral(cfg)) {
        h.update(arg.as_bytes());
        h.update([0]);
    }
    let binary = crate::run::which(&cfg.qemu).unwrap_or_else(|| cfg.qemu.clone());
    for file in [&binary, &cfg.kernel, &cfg.initrd] {
        h.update(file_identity(file).as_bytes());
    }
    for dir in &cfg.data_dirs {
        h.update(dir.display().to_string().as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// `cfg` with the paths that differ between boots of the same L1 fixed.
fn neutral(cfg: &BootConfig) -> BootConfig {
    BootConfig {
        console_log: PathBuf::from("/console.log"),
        runtime_dir: PathBuf::from("/run"),
        ..cfg.clone()
    }
}

fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} {} {}.{}\n",
            path.display(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => format!("{} missing\n", path.display()),
    }
}

/// QEMU's arguments to load a state: the saving boot's, then `-incoming
/// defer` (the stream is named by `migrate-incoming` once `mapped-ram` is on).
pub fn incoming_args(cfg: &BootConfig) -> Vec<String> {
    let mut args = qemu::qemu_args(cfg);
    args.extend(["-incoming".to_owned(), "defer".to_owned()]);
    args
}

fn mapped_ram() -> qapi::qmp::migrate_set_capabilities {
    qapi::qmp::migrate_set_capabilities {
        capabilities: vec![qapi::qmp::MigrationCapabilityStatus {
            capability: qapi::qmp::MigrationCapability::mapped_ram,
            state: true,
        }],
    }
}

/// What `state.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StateMeta {
    pub key: String,
    /// The saving QEMU's arguments without per-boot paths.
    pub args: Vec<String>,
    pub qemu_version: String,
    /// Size of `state.mig`: a shorter file is truncated.
    pub size: u64,
    /// Unix time of the save, in seconds.
    pub saved_at: u64,
    /// Boot to agent ready, then the save itself, in ms.
    pub boot_ms: u64,
    pub save_ms: u64,
}

/// How a group's scenarios ran.
pub enum GroupMode {
    /// Each scenario in its own L1 restored from `state`; `saved` is the
    /// boot and save this run made (`None`: the cache had the state).
    Restored {
        state: PathBuf,
        saved: Option<(Duration, Duration)>,
    },
    /// In one shared boot, because restore is impossible here.
    Shared { reason: String },
}

pub struct GroupOutcome {
    /// One per restored scenario, or the shared boot's.
    pub outcomes: Vec<BootOutcome>,
    pub mode: GroupMode,
}

/// Run `scenarios` each from a freshly restored L1 of `cfg` (saving the
/// state first when the cache lacks it). Logs: the saving boot's under
/// `<log dir>/save/`, each scenario's under `<log dir>/<n>-<scenario>/`.
pub async fn run_group(
    cache: &images::Cache,
    cfg: &BootConfig,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> GroupOutcome {
    run_group_from(cache, cfg, 0, scenarios, timeouts, on_event).await
}

/// [`run_group`] for scenarios `first..` of a group, so that restores of
/// one group can run side by side (the matrix) with distinct logs and sockets.
pub async fn run_group_from(
    cache: &images::Cache,
    cfg: &BootConfig,
    first: usize,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> GroupOutcome {
    if let Some(reason) = unsupported(scenarios) {
        return shared(cfg, scenarios, timeouts, on_event, reason).await;
    }
    let key = state_key(cfg);
    let mut resaved = false;
    let (mut state, mut saved) = match obtain(cache, &key, cfg, timeouts, on_event).await {
        Obtained::State(state, took) => (state, took),
        Obtained::Blocked(session, outcome, reason) => {
            return in_session(
                cfg, *session, outcome, scenarios, timeouts, on_event, reason,
            )
            .await;
        }
        Obtained::Failed(outcome) => {
            return GroupOutcome {
                outcomes: vec![outcome],
                mode: failed_mode(cfg),
            }
        }
    };
    let mut outcomes = Vec::new();
    for (n, scenario) in scenarios.iter().enumerate() {
        let one = scenario_cfg(cfg, first + n, &scenario.name);
        let mut outcome = BootOutcome::new(&one);
        let mut session = restore_undisturbed(
            &one,
            &state,
            timeouts,
            &mut outcome,
            on_event,
            &scenario.name,
        )
        .await;
        if let (Err(Restore::BadState(why)), false) = (&session, resaved) {
            // once per group: a second bad state is not the cache's fault
            resaved = true;
            match save_afresh(cache, cfg, &state, why, timeouts, on_event).await {
                Obtained::State(fresh, took) => {
                    state = fresh;
                    saved = took.or(saved);
                }
                Obtained::Blocked(s, _, reason) => {
                    s.quit().await;
                    outcome.failure = Some(Failure {
                        message: format!("saving afresh: migration blocked: {reason}"),
                        before_ready: true,
                    });
                    outcomes.push(outcome);
                    continue;
                }
                Obtained::Failed(o) => {
                    outcomes.push(o);
                    break;
                }
            }
            outcome = BootOutcome::new(&one);
            session = restore_undisturbed(
                &one,
                &state,
                timeouts,
                &mut outcome,
                on_event,
                &scenario.name,
            )
            .await;
        }
        run_restored(session, scenario, &mut outcome, on_event).await;
        let retry = outcome
            .runs
            .first()
            .filter(|r| r.to_retry())
            .and_then(|r| r.failure.clone());
        outcomes.push(outcome);
        if let Some(why) = retry {
            // the stock QEMU's lost wakeup: once more from the same state
            on_event(RunEvent::Retrying {
                variant: cfg.variant.name,
                scenario: scenario.name.clone(),
                why: why.clone(),
            });
            let again = cfg.beside(
                &format!("{}-{}-retry", first + n, scenario.name),
                &format!("r{}b", first + n),
            );
            let mut outcome = BootOutcome::new(&again);
            let session = restore_undisturbed(
                &again,
                &state,
                timeouts,
                &mut outcome,
                on_event,
                &scenario.name,
            )
            .await;
            run_restored(session, scenario, &mut outcome, on_event).await;
            match outcome.runs.first_mut() {
                Some(run) => run.retried_after = Some(why),
                None => outcome.runs.push(ScenarioRun {
                    scenario: scenario.name.clone(),
                    failure: outcome.failure.as_ref().map(|f| f.message.clone()),
                    retried_after: Some(why),
                    ..Default::default()
                }),
            }
            // the stalled try's outcome keeps its logs, not the scenario
            if let Some(stalled) = outcomes.last_mut() {
                stalled.runs.clear();
            }
            outcomes.push(outcome);
        }
    }
    GroupOutcome {
        outcomes,
        mode: GroupMode::Restored {
            state: state.dir,
            saved,
        },
    }
}

/// Runs `scenario` in a restored L1 (or records why there is none) and
/// ends that L1 without a shutdown: its state is thrown away.
async fn run_restored(
    session: Result<Session, Restore>,
    scenario: &Scenario,
    outcome: &mut BootOutcome,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) {
    match session {
        Ok(mut session) => {
            let run = session
                .run_timed(scenario, &mut outcome.timings, on_event)
                .await;
            if let Some(message) = &run.failure {
                outcome.failure = Some(Failure {
                    message: message.clone(),
                    before_ready: false,
                });
            }
            outcome.runs.push(run);
            let stopped = Instant::now();
            session.quit().await;
            outcome.timings.shutdown = stopped.elapsed();
        }
        Err(Restore::BadState(message))
        | Err(Restore::Disturbed(message))
        | Err(Restore::Failed(message)) => {
            outcome.failure = Some(Failure {
                message,
                before_ready: true,
            });
        }
    }
}

fn failed_mode(cfg: &BootConfig) -> GroupMode {
    GroupMode::Restored {
        state: cfg.runtime_dir.clone(),
        saved: None,
    }
}

/// The configuration of scenario `n`'s restored L1: its own logs and sockets.
pub(crate) fn scenario_cfg(cfg: &BootConfig, n: usize, scenario: &str) -> BootConfig {
    cfg.beside(&format!("{n}-{scenario}"), &format!("r{n}"))
}

fn save_cfg(cfg: &BootConfig) -> BootConfig {
    cfg.beside("save", "save")
}

pub(crate) enum Obtained {
    /// The state, and the boot and save times when this call made it.
    State(images::L1State, Option<(Duration, Duration)>),
    /// QEMU will not migrate this L1: the booted session, to run shared.
    Blocked(Box<Session>, BootOutcome, String),
    /// The saving boot failed.
    Failed(BootOutcome),
}

/// The cached state of `cfg`'s L1, else boot, save and publish it.
pub(crate) async fn obtain_state(
    cache: &images::Cache,
    cfg: &BootConfig,
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Obtained {
    obtain(cache, &state_key(cfg), cfg, timeouts, on_event).await
}

/// A saved state QEMU could not load (`why`): says so, moves it aside
/// and boots and saves `cfg`'s L1 afresh.
pub(crate) async fn save_afresh(
    cache: &images::Cache,
    cfg: &BootConfig,
    state: &images::L1State,
    why: &str,
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Obtained {
    eprintln!(
        "warning: the saved L1 state {} could not be loaded ({why}): discarding it and saving afresh",
        state.dir.display()
    );
    if let Err(e) = tokio::task::block_in_place(|| images::discard_l1_state(cache, state)) {
        eprintln!("warning: discarding {}: {e}", state.dir.display());
    }
    obtain_state(cache, cfg, timeouts, on_event).await
}

/// The cached state of `key`, else boot, save and publish it.
async fn obtain(
    cache: &images::Cache,
    key: &str,
    cfg: &BootConfig,
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Obtained {
    let save = save_cfg(cfg);
    let mut outcome = BootOutcome::new(&save);
    let writer = match tokio::task::block_in_place(|| images::l1_state_slot(cache, key)) {
        Ok(images::L1StateSlot::Found(state)) => return Obtained::State(state, None),
        Ok(images::L1StateSlot::Save(writer)) => writer,
        Err(e) => {
            outcome.failure = Some(Failure {
                message: format!("l1 state cache: {e}"),
                before_ready: true,
            });
            return Obtained::Failed(outcome);
        }
    };
    let started = Instant::now();
    let session = match Session::start(&save, timeouts, &mut outcome, on_event).await {
        Ok(s) => s,
        Err(failure) => {
            outcome.failure = Some(failure);
            return Obtained::Failed(outcome);
        }
    };
    let boot = started.elapsed();
    if let Some(reason) = blocked(&session).await {
        return Obtained::Blocked(Box::new(session), outcome, reason);
    }
    let saving = Instant::now();
    let result = save_to(&session, &writer.state_file()).await;
    session.quit().await;
    let save_took = saving.elapsed();
    if let Err(message) = result {
        outcome.failure = Some(Failure {
            message: format!("saving the L1 state: {message}"),
            before_ready: false,
        });
        return Obtained::Failed(outcome);
    }
    let size = std::fs::metadata(writer.state_file())
        .map(|m| m.len())
        .unwrap_or(0);
    let meta = StateMeta {
        key: key.to_owned(),
        args: qemu::qemu_args(&neutral(cfg)),
        qemu_version: outcome.qemu_version.clone(),
        size,
        saved_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        boot_ms: boot.as_millis() as u64,
        save_ms: save_took.as_millis() as u64,
    };
    let meta = serde_json::to_string_pretty(&meta).expect("state meta serializes");
    match tokio::task::block_in_place(|| writer.publish(&meta)) {
        Ok(state) => Obtained::State(state, Some((boot, save_took))),
        Err(e) => {
            outcome.failure = Some(Failure {
                message: format!("publishing the L1 state: {e}"),
                before_ready: false,
            });
            Obtained::Failed(outcome)
        }
    }
}

/// QEMU's reasons not to migrate this L1 (`query-migrate`'s `blocked-reasons`).
async fn blocked(session: &Session) -> Option<String> {
    match session.qmp().execute(qapi::qmp::query_migrate {}).await {
        Ok(info) => info
            .blocked_reasons
            .filter(|r| !r.is_empty())
            .map(|r| r.join("; ")),
        Err(e) => Some(format!("query-migrate: {e}")),
    }
}

/// Stop the guest and migrate it into `file`.
async fn save_to(session: &Session, file: &Path) -> Result<(), String> {
    let qmp = session.qmp();
    qmp.execute(qapi::qmp::stop {})
        .await
        .map_err(|e| format!("stop: {e}"))?;
    qmp.execute(mapped_ram())
        .await
        .map_err(|e| format!("mapped-ram: {e}"))?;
    let uri = format!("file:{}", file.display());
    let migrate = qapi::qmp::migrate {
        uri: Some(uri),
        channels: None,
        detach: None,
        resume: None,
    };
    qmp.execute(migrate)
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    wait_migration(session).await
}

/// Poll `query-migrate` until the migration (either way) completed.
async fn wait_migration(session: &Session) -> Result<(), String> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let info = session
            .qmp()
            .execute(qapi::qmp::query_migrate {})
            .await
            .map_err(|e| format!("query-migrate: {e}"))?;
        match info.status {
            Some(qapi::qmp::MigrationStatus::completed) => return Ok(()),
            Some(
                s @ (qapi::qmp::MigrationStatus::failed | qapi::qmp::MigrationStatus::cancelled),
            ) => {
                let status = serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(format!(
                    "migration {status}: {}",
                    info.error_desc.unwrap_or_else(|| "no reason given".into())
                ));
            }
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "migration not complete after {} s",
                    MIGRATION_TIMEOUT.as_secs()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Why a restore failed.
pub enum Restore {
    /// The state file cannot be loaded: discard it and save afresh.
    BadState(String),
    /// The guest came back but its kernel logged that its time went wrong
    /// (`wire::resume_noise`): seen only on a loaded host (at a load
    /// average of 8-10, 4 of 312 restores of a matrix run: "hrtimer:
    /// interrupt took 13467681 ns", the TSC marked unstable). Restore again.
    Disturbed(String),
    Failed(String),
}

/// Restores of one scenario (or selftest) after a disturbed one.
const DISTURBED_RETRIES: u32 = 2;

/// [`restore`] (into `cfg`'s runtime directory, made here), again while
/// the guest comes back disturbed, at most [`DISTURBED_RETRIES`] more
/// times; the last failure says how many.
/// `what` names the scenario or test in the warning.
pub(crate) async fn restore_undisturbed(
    cfg: &BootConfig,
    state: &images::L1State,
    timeouts: Timeouts,
    outcome: &mut BootOutcome,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
    what: &str,
) -> Result<Session, Restore> {
    std::fs::create_dir_all(&cfg.runtime_dir)
        .map_err(|e| Restore::Failed(format!("creating {}: {e}", cfg.runtime_dir.display())))?;
    let mut tries = 1;
    loop {
        // the QEMU of an earlier load of this L1 (disturbed, or of a bad
        // state) is gone, its agent socket file is not
        let _ = std::fs::remove_file(cfg.agent_socket());
        match restore(cfg, state, timeouts, outcome, on_event).await {
            Err(Restore::Disturbed(why)) if tries <= DISTURBED_RETRIES => {
                eprintln!(
                    "warning: {} {what}: {why}: restoring again ({tries} of {DISTURBED_RETRIES})",
                    cfg.variant.name
                );
                tries += 1;
                *outcome = BootOutcome::new(cfg);
            }
            Err(Restore::Disturbed(why)) => {
                return Err(Restore::Disturbed(format!(
                    "{why} (each of {tries} restores)"
                )))
            }
            other => return other,
        }
    }
}

/// A new QEMU loaded from `state`, resumed, its agent ready again.
pub(crate) async fn restore(
    cfg: &BootConfig,
    state: &images::L1State,
    timeouts: Timeouts,
    outcome: &mut BootOutcome,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
) -> Result<Session, Restore> {
    let started = Instant::now();
    check_size(state).map_err(Restore::BadState)?;
    let launched = runner::launch(cfg, &incoming_args(cfg), outcome, on_event)
        .await
        .map_err(|f| Restore::Failed(f.message))?;
    let runner::Launched {
        mut qemu,
        qmp,
        events,
        listener,
    } = launched;
    let stderr_log = cfg.console_log.with_file_name("qemu-stderr.log");
    let file = state.state_file();
    let load = async {
        qmp.execute(mapped_ram())
            .await
            .map_err(|e| format!("mapped-ram: {e}"))?;
        let incoming = qapi::qmp::migrate_incoming {
            uri: Some(format!("file:{}", file.display())),
            channels: None,
            exit_on_error: Some(false),
        };
        qmp.execute(incoming)
            .await
            .map_err(|e| format!("migrate-incoming: {e}"))?;
        let deadline = Instant::now() + MIGRATION_TIMEOUT;
        loop {
            let info = qmp
                .execute(qapi::qmp::query_migrate {})
                .await
                .map_err(|e| format!("query-migrate: {e}"))?;
            match info.status {
                Some(qapi::qmp::MigrationStatus::completed) => return Ok(()),
                Some(qapi::qmp::MigrationStatus::failed) => {
                    return Err(info.error_desc.unwrap_or_else(|| "the load failed".into()))
                }
                _ if Instant::now() > deadline => return Err("the load did not finish".to_owned()),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let loaded: Result<(), String> = tokio::select! {
        r = load => r,
        status = qemu.wait() => Err(runner::qemu_exit_message(status, &stderr_log, "the load of the saved state")),
    };
    loaded.map_err(|why| Restore::BadState(format!("{}: {why}", file.display())))?;
    let failed = |m: String| Restore::Failed(m);
    // the guest's firmware and kernel placed every device before the save
    let mut bdfs = std::collections::HashMap::new();
    for device in &cfg.devices {
        let address = qmp
            .pci_address(&device.id)
            .await
            .map_err(|e| failed(format!("qmp: {e}")))?;
        bdfs.insert(device.id.clone(), address.to_string());
    }
    qmp.execute(qapi::qmp::cont {})
        .await
        .map_err(|e| failed(format!("qmp: cont: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeouts.boot;
    let stream = tokio::select! {
        accepted = listener.accept() => accepted.map(|(s, _)| s).map_err(|e| format!("agent socket: {e}")),
        status = qemu.wait() => Err(runner::qemu_exit_message(status, &stderr_log, "the restore")),
        _ = tokio::time::sleep_until(deadline) => Err("qemu never connected the agent port".to_owned()),
    }
    .map_err(failed)?;
    let launched = runner::Launched {
        qemu,
        qmp,
        events,
        listener,
    };
    let mut session = Session::connected(cfg, launched, stream, bdfs, timeouts);
    let unix_time_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    session
        .send(&wire::HostMessage::Resumed { unix_time_ns })
        .await
        .map_err(failed)?;
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    match session
        .next_message(remaining, "the agent's answer to resumed")
        .await
    {
        Interrupt::Message(wire::AgentMessage::Ready(ready)) => {
            let Some(resume) = &ready.resume else {
                return Err(failed(
                    "agent answered resumed with a ready that says nothing about it".into(),
                ));
            };
            if ready.protocol != wire::PROTOCOL_VERSION {
                return Err(failed(format!(
                    "agent speaks protocol {}, testbed {}",
                    ready.protocol,
                    wire::PROTOCOL_VERSION
                )));
            }
            if !resume.noise.is_empty() {
                return Err(Restore::Disturbed(format!(
                    "the restore disturbed the guest: {}",
                    resume.noise.join("; ")
                )));
            }
            outcome.timings.boot_to_ready = started.elapsed() - outcome.timings.qemu_start;
            on_event(RunEvent::AgentReady {
                variant: cfg.variant.name,
                after: started.elapsed(),
            });
            outcome.ready = Some(ready);
            Ok(session)
        }
        Interrupt::Message(other) => Err(failed(format!(
            "agent: expected ready, got {}",
            runner::message_kind(&other)
        ))),
        Interrupt::Failed(message) => Err(failed(message)),
    }
}

/// A state file shorter than the save wrote is truncated.
fn check_size(state: &images::L1State) -> Result<(), String> {
    let meta: StateMeta = state
        .meta()
        .ok()
        .and_then(|m| serde_json::from_str(&m).ok())
        .ok_or_else(|| format!("{}: unreadable", state.meta_file().display()))?;
    let file = state.state_file();
    let size = std::fs::metadata(&file)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if size != meta.size {
        return Err(format!(
            "{}: {size} bytes, the save wrote {}",
            file.display(),
            meta.size
        ));
    }
    Ok(())
}

/// Boot sharing, for a group restore cannot serve.
async fn shared(
    cfg: &BootConfig,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
    reason: String,
) -> GroupOutcome {
    let outcome = runner::run_boot(cfg, scenarios, timeouts, on_event).await;
    GroupOutcome {
        outcomes: runner::rest_on_new_boots(cfg, outcome, scenarios, timeouts, on_event).await,
        mode: GroupMode::Shared { reason },
    }
}

/// The rest of a boot restore could not save (`cfg`'s): its scenarios,
/// shared, and after a break the rest on new boots of `cfg`.
pub(crate) async fn in_session(
    cfg: &BootConfig,
    session: Session,
    outcome: BootOutcome,
    scenarios: &[&Scenario],
    timeouts: Timeouts,
    on_event: &mut (dyn FnMut(RunEvent) + Send),
    reason: String,
) -> GroupOutcome {
    let outcome = runner::run_in_session(session, outcome, scenarios, on_event).await;
    GroupOutcome {
        outcomes: runner::rest_on_new_boots(cfg, outcome, scenarios, timeouts, on_event).await,
        mode: GroupMode::Shared {
            reason: format!("QEMU cannot migrate this L1: {reason}"),
        },
    }
}

/// Each scenario's run, whichever way the group ran.
pub fn runs(group: &GroupOutcome) -> impl Iterator<Item = (&BootOutcome, &ScenarioRun)> {
    group
        .outcomes
        .iter()
        .flat_map(|o| o.runs.iter().map(move |r| (o, r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> BootConfig {
        let kernel = dir.join("vmlinux");
        let initrd = dir.join("initrd.cpio");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&initrd, b"initrd").unwrap();
        BootConfig {
            qemu: PathBuf::from("/bin/true"),
            data_dirs: Vec::new(),
            variant: crate::variant::lookup("intel-ir").unwrap(),
            accel: qemu::Accel::Tcg,
            kernel,
            initrd,
            extra_cmdline: Vec::new(),
            devices: vec![qemu::PciDevice {
                id: "dev0".into(),
                driver: "edu".into(),
                props: String::new(),
                hotplug: false,
                addr: None,
                sriov: false,
                hub: None,
            }],
            memory_mib: 1024,
            smp: 1,
            extra_args: Vec::new(),
            runtime_dir: dir.join("run-a"),
            console_log: dir.join("a/console.log"),
        }
    }

    #[test]
    fn the_key_ignores_logs_and_sockets_and_follows_everything_else() {
        let t = tempfile::tempdir().unwrap();
        let base = cfg(t.path());
        let key = state_key(&base);
        let elsewhere = BootConfig {
            runtime_dir: t.path().join("run-b"),
            console_log: t.path().join("b/console.log"),
            ..base.clone()
        };
        assert_eq!(state_key(&elsewhere), key);
        let changes = [
            BootConfig {
                memory_mib: 2048,
                ..base.clone()
            },
            BootConfig {
                smp: 2,
                ..base.clone()
            },
            BootConfig {
                extra_cmdline: vec!["quiet".into()],
                ..base.clone()
            },
            BootConfig {
                devices: Vec::new(),
                ..base.clone()
            },
            BootConfig {
                variant: crate::variant::lookup("virtio-iommu").unwrap(),
                ..base.clone()
            },
            BootConfig {
                qemu: PathBuf::from("/bin/false"),
                ..base.clone()
            },
        ];
        for changed in &changes {
            assert_ne!(state_key(changed), key, "{:?}", qemu::qemu_args(changed));
        }
        // a rebuilt initramfs at the same path is another state
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&base.initrd, b"initrd, rebuilt").unwrap();
        assert_ne!(state_key(&base), key);
    }

    #[test]
    fn a_restore_has_the_saving_arguments_and_waits_for_the_stream() {
        let t = tempfile::tempdir().unwrap();
        let base = cfg(t.path());
        let args = incoming_args(&base);
        let (tail, head) = args.split_at(args.len() - 2);
        assert_eq!(head, ["-incoming", "defer"]);
        assert_eq!(tail, qemu::qemu_args(&base).as_slice());
    }

    #[test]
    fn a_truncated_state_is_found_before_qemu_starts() {
        let t = tempfile::tempdir().unwrap();
        let cache = images::Cache::new(t.path());
        let images::L1StateSlot::Save(w) = images::l1_state_slot(&cache, "k").unwrap() else {
            panic!()
        };
        std::fs::write(w.state_file(), vec![7u8; 4096]).unwrap();
        let meta = StateMeta {
            key: "k".into(),
            args: Vec::new(),
            qemu_version: String::new(),
            size: 4096,
            saved_at: 0,
            boot_ms: 0,
            save_ms: 0,
        };
        let state = w.publish(&serde_json::to_string(&meta).unwrap()).unwrap();
        assert_eq!(check_size(&state), Ok(()));
        std::fs::OpenOptions::new()
            .write(true)
            .open(state.state_file())
            .unwrap()
            .set_len(100)
            .unwrap();
        let why = check_size(&state).unwrap_err();
        assert!(why.ends_with("100 bytes, the save wrote 4096"), "{why}");
    }
}
