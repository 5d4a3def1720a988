//! Acting on a running real L2 through its VMM's own QMP (a monitor on a
//! pair of FIFOs, so no AF_UNIX is needed): hot-unplug and replug of an
//! assigned device (`device_del` / `device_add`: QEMU's own teardown and
//! setup order, as in production) and pause / resume (`stop` / `cont`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wire::{L2Command, L2Message, L2StepReport, Step};

use crate::nested::L2Linux;
use crate::say;

/// Longest one QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest L2 may take to eject an unplugged device (ACPI hotplug in a
/// nested guest under TCG).
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(120);

/// The FIFO pair's base path: QEMU reads `<base>.in` and writes `<base>.out`.
pub fn qmp_base(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/l2-{name}-qmp"))
}

/// Make the FIFOs before the VMM starts.
pub fn make_fifos(name: &str) -> Result<(), String> {
    let base = qmp_base(name);
    for ext in ["in", "out"] {
        let p = base.with_extension(ext);
        let _ = std::fs::remove_file(&p);
        let c =
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(crate::sys::last_err(&format!("mkfifo {}", p.display())));
        }
    }
    Ok(())
}

/// The VMM's QMP arguments.
pub fn qmp_args(name: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("pipe,id=qmp,path={}", qmp_base(name).display()),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
    ]
}

/// A QMP session with an L2's VMM.
pub struct Qmp {
    input: File,
    lines: Receiver<Value>,
    negotiated: bool,
    events: Vec<Value>,
}

impl Qmp {
    /// Open the FIFOs (read-write, so neither open blocks on QEMU).
    pub fn open(name: &str) -> Result<Qmp, String> {
        let base = qmp_base(name);
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let input = open(&base.with_extension("in"))?;
        let output = open(&base.with_extension("out"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("qmp-{name}"))
            .spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(Qmp {
            input,
            lines: rx,
            negotiated: false,
            events: Vec::new(),
        })
    }

    /// Run a command and return its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        args: Value,
        tick: &mut dyn FnMut(),
    ) -> Result<Value, String> {
        if !self.negotiated {
            self.negotiated = true;
            self.execute("qmp_capabilities", json!({}), tick)?;
        }
        let mut line = serde_json::to_string(&json!({ "execute": command, "arguments": args }))
            .map_err(|e| e.to_string())?;
        line.push('\n');
        self.input
            .write_all(line.as_bytes())
            .map_err(|e| format!("QMP {command}: {e}"))?;
        let t0 = Instant::now();
        loop {
            tick();
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => {
                    if let Some(r) = v.get("return") {
                        return Ok(r.clone());
                    }
                    if let Some(e) = v.get("error") {
                        let desc = e
                            .get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no description");
                        return Err(format!("QMP {command}: {desc}"));
                    }
                    if v.get("event").is_some() {
                        self.events.push(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("QMP {command}: the VMM closed its monitor"))
                }
            }
            if t0.elapsed() > QMP_TIMEOUT {
                return Err(format!("QMP {command}: no answer within {QMP_TIMEOUT:?}"));
            }
        }
    }

    /// Wait for `event` whose `data.device` is `device`.
    fn wait_event(
        &mut self,
        event: &str,
        device: &str,
        timeout: Duration,
        tick: &mut dyn FnMut(),
    ) -> Result<(), String> {
        let is = |v: &Value| {
            v.get("event").and_then(Value::as_str) == Some(event)
                && v.pointer("/data/device").and_then(Value::as_str) == Some(device)
        };
        if let Some(i) = self.events.iter().position(is) {
            self.events.remove(i);
            return Ok(());
        }
        let t0 = Instant::now();
        loop {
            tick();
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(v) if is(&v) => return Ok(()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("the VMM closed its monitor before {event}"))
                }
            }
            if t0.elapsed() > timeout {
                return Err(format!("no {event} for {device} within {timeout:?}"));
            }
        }
    }
}

/// `l2-unplug`, `l2-replug`, `l2-pause`, `l2-resume`: what a replug
/// brought up in L2 is the step's report.
pub fn control(
    l2s: &mut [(String, L2Linux)],
    step: &Step,
    tick: &mut dyn FnMut(),
) -> Result<Option<L2StepReport>, String> {
    let name = step.l2().ok_or("not an L2 step")?;
    let (_, vm) = l2s
        .iter_mut()
        .find(|(n, _)| n == name)
        .ok_or_else(|| format!("no running L2 named {name}"))?;
    let t0 = Instant::now();
    match step {
        Step::L2Unplug { device, .. } => {
            vm.qmp
                .execute("device_del", json!({ "id": device }), tick)?;
            vm.qmp
                .wait_event("DEVICE_DELETED", device, UNPLUG_TIMEOUT, tick)?;
            say!(
                "{name}: {device} unplugged after {} ms",
                t0.elapsed().as_millis()
            );
            Ok(None)
        }
        Step::L2Replug { device, .. } => {
            let (i, (_, l1_bdf, l2_bdf)) = vm
                .devices
                .iter()
                .enumerate()
                .find(|(_, (n, ..))| n == device)
                .map(|(i, d)| (i, d.clone()))
                .ok_or_else(|| format!("{device} is not in L2 {name}"))?;
            let args = json!({
                "driver": "vfio-pci",
                "id": device,
                "host": l1_bdf,
                "addr": crate::nested::l2_addr(i),
                "rombar": 0,
            });
            vm.qmp.execute("device_add", args, tick)?;
            let queues = vm.queues;
            let ready = vm.command(
                name,
                &L2Command::BringUp {
                    bdf: l2_bdf.clone(),
                    queues,
                },
                tick,
            )?;
            let L2Message::Ready { nics, .. } = ready else {
                return Err(match ready {
                    L2Message::Failed { message } => {
                        format!("{name}: {device} after device_add: {message}")
                    }
                    other => format!("{name} answered {other:?}"),
                });
            };
            say!(
                "{name}: {device} replugged and up after {} ms",
                t0.elapsed().as_millis()
            );
            let nics = nics
                .into_iter()
                .map(|mut n| {
                    n.bdf = device.clone();
                    n
                })
                .collect();
            Ok(Some(L2StepReport {
                nics,
                ..Default::default()
            }))
        }
        Step::L2Pause { .. } => {
            vm.qmp.execute("stop", json!({}), tick)?;
            Ok(None)
        }
        Step::L2Resume { .. } => {
            vm.qmp.execute("cont", json!({}), tick)?;
            Ok(None)
        }
        Step::KillL2 { .. } => {
            let status = vm.kill()?;
            say!(
                "{name}: its QEMU killed ({status}) after {} ms",
                t0.elapsed().as_millis()
            );
            Ok(None)
        }
        other => Err(format!("{} is not an L2 control step", other.action())),
    }
}
