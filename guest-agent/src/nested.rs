//! A real L2 Linux, seen from L1: the VMM the boot carries (QEMU and its
//! library closure, `images::vmm_files`) runs the same kernel with a small
//! initramfs whose agent takes its L2 role (`l2linux.rs`). The L2's first
//! serial port is its console (a file in L1's /tmp), its second one is the
//! VMM's stdio: JSON lines of `wire::L2Command` / `wire::L2Message`.
//!
//! The VMM is this agent's child with PR_SET_PDEATHSIG, and [`L2Linux`]
//! kills and reaps it when dropped: no L2 outlives its scenario.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use wire::{L2Command, L2Message};

use crate::say;

/// Where the boot's initramfs puts the VMM, its firmware, the L2 kernel
/// and initramfs (the host's `testbed::nested` writes the same paths).
pub const VMM: &str = "/opt/testbed/vmm/qemu-system-x86_64";
pub const FIRMWARE: &str = "/opt/testbed/vmm/firmware";
pub const L2_KERNEL: &str = "/opt/testbed/l2/kernel";
pub const L2_INITRD: &str = "/opt/testbed/l2/initrd";

/// Longest an L2 may take from spawn to ready (TCG under L1's KVM: ~25-60 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest one command to a running L2 may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// L2 memory.
const L2_MEMORY_MIB: u32 = 256;
/// First PCI slot of the assigned devices in L2 (slot 0x10 + i).
const FIRST_SLOT: u32 = 0x10;

/// A running L2 and its VMM.
pub struct L2Linux {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// The VMM's own monitor (`l2ctl`).
    pub qmp: crate::l2ctl::Qmp,
    /// Combined queues per NIC, as asked at start-l2.
    pub queues: u32,
    pub console: PathBuf,
    /// (scenario device, L1 address or vhost-vdpa node, L2 address)
    pub devices: Vec<(String, String, String)>,
    /// vDPA devices the VMM opened, held only to be deleted after it is
    /// gone (fields drop after `Drop::drop` killed and reaped it).
    _vdpa: Vec<crate::vdpa::VhostNode>,
}

/// The L2 address of the i-th assigned device.
pub fn l2_bdf(i: usize) -> String {
    format!("0000:00:{:02x}.0", FIRST_SLOT + i as u32)
}

/// The `addr` of the i-th assigned device on the L2's PCI bus.
pub fn l2_addr(i: usize) -> String {
    format!("{:#x}.0", FIRST_SLOT + i as u32)
}

/// How a device reaches the L2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2Backing {
    /// A PCI function of L1 bound to vfio-pci: `-device vfio-pci,host=`.
    Vfio { bdf: String },
    /// A vDPA device bound to vhost_vdpa: its node, opened by the VMM
    /// (`-netdev type=vhost-vdpa`) behind a `virtio-net-pci` in L2.
    VhostVdpa { node: String },
}

impl L2Backing {
    /// What L1 knows the device by: the PCI address, or the node.
    pub fn l1_name(&self) -> &str {
        match self {
            L2Backing::Vfio { bdf } => bdf,
            L2Backing::VhostVdpa { node } => node,
        }
    }
}

/// The VMM's command line. `devices`: (scenario name, how it reaches the
/// L2); the name is the QEMU device id. `hotplug`: the L2 keeps ACPI,
/// which PCI hotplug on the `pc` machine needs.
pub fn vmm_args(
    name: &str,
    devices: &[(String, L2Backing)],
    queues: u32,
    append: Option<&str>,
    hotplug: bool,
) -> Vec<String> {
    let mut cmdline = format!(
        "console=ttyS0 testbed_l2=1 testbed_l2.queues={queues} panic=-1 quiet mitigations=off tsc=reliable no_timer_check"
    );
    if !hotplug {
        cmdline.push_str(" acpi=off");
    }
    if let Some(a) = append {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    let vdpa = devices
        .iter()
        .any(|(_, b)| matches!(b, L2Backing::VhostVdpa { .. }));
    let mut args: Vec<String> = [
        "-L",
        FIRMWARE,
        "-machine",
        // vhost-vdpa maps the L2's memory for its parent; vdpa_sim works on
        // L1's virtual addresses (use_va), and vhost_vdpa_va_map takes only
        // shared file-backed memory: anonymous guest RAM would be skipped
        if vdpa {
            "pc,accel=kvm,memory-backend=l2mem"
        } else {
            "pc,accel=kvm"
        },
        "-cpu",
        "host",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        // KVM inhibits APICv/AVIC for the whole VM while its in-kernel PIT
        // reinjects lost ticks (APICV_INHIBIT_REASON_PIT_REINJ): without
        // this, amd-avic's L2 takes every interrupt through L1 and nothing
        // is posted (measured: posted 0, 233 MSIs injected by KVM)
        "-global",
        "kvm-pit.lost_tick_policy=discard",
        "-kernel",
        L2_KERNEL,
        "-initrd",
        L2_INITRD,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["-m".into(), format!("{L2_MEMORY_MIB}M")]);
    if vdpa {
        args.extend([
            "-object".into(),
            format!("memory-backend-memfd,id=l2mem,size={L2_MEMORY_MIB}M,share=on"),
        ]);
    }
    args.extend(["-append".into(), cmdline]);
    args.extend([
        "-serial".into(),
        format!("file:{}", console_path(name).display()),
        "-serial".into(),
        "stdio".into(),
    ]);
    for (i, (id, backing)) in devices.iter().enumerate() {
        match backing {
            L2Backing::Vfio { bdf } => args.extend([
                "-device".into(),
                format!("vfio-pci,host={bdf},id={id},addr={},rombar=0", l2_addr(i)),
            ]),
            // no option ROM (the boot carries none); MSI-X: a vector per
            // virtqueue plus the configuration vector (QEMU's default)
            L2Backing::VhostVdpa { node } => args.extend([
                "-netdev".into(),
                format!("type=vhost-vdpa,vhostdev={node},id=net-{id}"),
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev=net-{id},id={id},addr={},romfile=",
                    l2_addr(i)
                ),
            ]),
        }
    }
    args.extend(crate::l2ctl::qmp_args(name));
    args
}

fn console_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/l2-{name}-console.log"))
}

/// The last lines of a file, for error messages; a kernel panic's
/// headline (and the line before it, which says why) first.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::new();
    if let Some(i) = lines
        .iter()
        .position(|l| l.contains("Kernel panic - not syncing"))
    {
        out.extend(lines[i.saturating_sub(1)..=i].iter().copied());
        out.push("...");
    }
    out.extend(lines[lines.len().saturating_sub(n)..].iter().copied());
    out.join(" | ")
}

impl L2Linux {
    /// Start the VMM with `devices` (scenario name, and a PCI function
    /// already bound to vfio-pci or a vDPA device's node among `vdpa`) and wait for the L2's ready message, calling
    /// `tick` every 100 ms meanwhile.
    pub fn start(
        name: &str,
        devices: &[(String, L2Backing)],
        vdpa: Vec<crate::vdpa::VhostNode>,
        queues: u32,
        append: Option<&str>,
        hotplug: bool,
        tick: &mut dyn FnMut(),
    ) -> Result<(L2Linux, L2Message, Duration), String> {
        for f in [VMM, L2_KERNEL, L2_INITRD] {
            if !Path::new(f).exists() {
                return Err(format!("{f} is not in this boot's initramfs (the host adds the VMM only to boots with start-l2 steps)"));
            }
        }
        let console = console_path(name);
        let _ = std::fs::remove_file(&console);
        let stderr_path = PathBuf::from(format!("/tmp/l2-{name}-qemu-stderr.log"));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let args = vmm_args(name, devices, queues, append, hotplug);
        crate::l2ctl::make_fifos(name)?;
        // opened read-write before QEMU opens them too: no open blocks, and
        // nothing can fail between spawning the VMM and owning it
        let qmp = crate::l2ctl::Qmp::open(name)?;
        say!("{name}: {VMM} {}", args.join(" "));
        let t0 = Instant::now();
        let mut cmd = Command::new(VMM);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl only, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawning {VMM}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("l2-{name}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim().to_string();
                    if line.starts_with('{') && tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        let mut l2 = L2Linux {
            child,
            stdin,
            lines: rx,
            qmp,
            queues,
            console,
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, (n, b))| (n.clone(), b.l1_name().to_string(), l2_bdf(i)))
                .collect(),
            _vdpa: vdpa,
        };
        let ready = l2.next_message(BOOT_TIMEOUT, tick, &stderr_path)?;
        let took = t0.elapsed();
        match ready {
            L2Message::Ready { .. } => Ok((l2, ready, took)),
            L2Message::Failed { message } => Err(format!("L2 failed to come up: {message}")),
            other => Err(format!("L2 sent {other:?} instead of ready")),
        }
    }

    /// The next message from L2, or why there is none.
    fn next_message(
        &mut self,
        timeout: Duration,
        tick: &mut dyn FnMut(),
        stderr: &Path,
    ) -> Result<L2Message, String> {
        let t0 = Instant::now();
        loop {
            tick();
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    return serde_json::from_str(&line)
                        .map_err(|e| format!("bad message from L2 ({e}): {line}"));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return Err(format!(
                        "the L2's QEMU exited ({status}) after {:.1} s without an answer; its stderr: [{}]; L2 console: [{}]",
                        t0.elapsed().as_secs_f64(),
                        tail(stderr, 5),
                        tail(&self.console, 8)
                    ));
                }
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "no answer from L2 within {timeout:?}; L2 console: [{}]",
                    tail(&self.console, 8)
                ));
            }
        }
    }

    /// How the VMM ended, if it has.
    fn gone(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }

    /// The error for a command to an L2 whose VMM is gone.
    fn gone_error(&self, status: &str) -> String {
        let console = tail(&self.console, 8);
        if console.is_empty() {
            format!("the L2's QEMU is gone ({status})")
        } else {
            format!("the L2's QEMU is gone ({status}); L2 console: [{console}]")
        }
    }

    /// SIGKILL the VMM and wait for it: how it ended.
    pub fn kill(&mut self) -> Result<String, String> {
        if let Some(status) = self.gone() {
            return Err(self.gone_error(&status));
        }
        self.child
            .kill()
            .map_err(|e| format!("killing the L2's QEMU: {e}"))?;
        self.child
            .wait()
            .map(|s| s.to_string())
            .map_err(|e| format!("waiting for the L2's QEMU: {e}"))
    }

    /// Send a command and wait for its answer.
    pub fn command(
        &mut self,
        name: &str,
        cmd: &L2Command,
        tick: &mut dyn FnMut(),
    ) -> Result<L2Message, String> {
        if let Some(status) = self.gone() {
            return Err(self.gone_error(&status));
        }
        let mut line = serde_json::to_string(cmd).map_err(|e| e.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing to the L2's QEMU: {e}"))?;
        let stderr = PathBuf::from(format!("/tmp/l2-{name}-qemu-stderr.log"));
        self.next_message(COMMAND_TIMEOUT, tick, &stderr)
    }

    /// Stop the L2 (it resets) and wait for its QEMU to exit by itself (-no-reboot).
    pub fn stop(mut self, tick: &mut dyn FnMut()) -> Result<(), String> {
        if let Some(status) = self.gone() {
            return Err(self.gone_error(&status));
        }
        let mut line = serde_json::to_string(&L2Command::Poweroff).map_err(|e| e.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing to the L2's QEMU: {e}"))?;
        let t0 = Instant::now();
        loop {
            tick();
            match self.child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("the L2's QEMU exited with {s} on poweroff")),
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the L2's QEMU: {e}")),
            }
            if t0.elapsed() > COMMAND_TIMEOUT {
                return Err(format!(
                    "the L2's QEMU did not exit within {COMMAND_TIMEOUT:?} of poweroff (killed)"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for L2Linux {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
