//! QEMU command lines, built by small pure functions, and the process that
//! owns a running QEMU. Dropping a [`QemuProcess`] kills and reaps QEMU, and
//! QEMU also dies with the testbed (PR_SET_PDEATHSIG, spawned from a thread
//! that lasts as long as the testbed), so no path leaves one behind.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::variant::{QemuKind, Variant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// KVM only where the host has real hardware virtualization: some hosts
    /// expose a /dev/kvm (e.g. PVM) that cannot run a stock kernel.
    pub fn detect() -> Accel {
        let hw = Path::new("/sys/module/kvm_intel").exists()
            || Path::new("/sys/module/kvm_amd").exists();
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if hw && usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// A PCI device the scenario assigns, as QEMU sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// QEMU `id=`, the scenario's device name.
    pub id: String,
    /// QEMU driver, e.g. `edu`.
    pub driver: String,
    /// Extra comma-separated properties, e.g. `romfile=`; may be empty.
    pub props: String,
    /// Sits alone behind its own PCIe root port (`rp-<id>`), so that QMP
    /// `device_del`/`device_add` can unplug and replug it: q35's root bus
    /// is not hot-pluggable.
    pub hotplug: bool,
    /// Fixed `addr=` on the root bus (`05.0`), when the scenario pins it.
    pub addr: Option<String>,
    /// The agent enables SR-IOV on it and assigns a virtual function.
    pub sriov: bool,
    /// The QEMU hub a NIC is joined to (`-netdev hubport`), by scenario name.
    pub hub: Option<String>,
}

/// Everything one L1 boot needs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    pub qemu: PathBuf,
    /// Firmware directories, each passed with `-L` (a patched QEMU built
    /// from the `+ds` source has none of its own); empty for the stock QEMU.
    pub data_dirs: Vec<PathBuf>,
    pub variant: &'static Variant,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub extra_cmdline: Vec<String>,
    pub devices: Vec<PciDevice>,
    pub memory_mib: u32,
    /// L1 CPUs (`-smp`): the variant's, unless the user asked for others.
    pub smp: u32,
    /// Extra QEMU arguments from the user (`--qemu-arg`), last.
    pub extra_args: Vec<String>,
    /// Holds qmp.sock and agent.sock.
    pub runtime_dir: PathBuf,
    pub console_log: PathBuf,
}

impl BootConfig {
    /// Another boot of this configuration: its logs in `logs/` beside this
    /// boot's console log, its sockets in `runtime/` under this one's
    /// runtime directory (both created, best effort: whatever is missing
    /// shows when QEMU starts).
    pub(crate) fn beside(&self, logs: &str, runtime: &str) -> BootConfig {
        let log_dir = self
            .console_log
            .parent()
            .unwrap_or(Path::new("."))
            .join(logs);
        let runtime_dir = self.runtime_dir.join(runtime);
        for dir in [&log_dir, &runtime_dir] {
            let _ = std::fs::create_dir_all(dir);
        }
        BootConfig {
            console_log: log_dir.join("console.log"),
            runtime_dir,
            ..self.clone()
        }
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.runtime_dir.join("qmp.sock")
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.runtime_dir.join("agent.sock")
    }
}

/// The patched QEMU of a run: built (or found in the cache) from the pinned
/// source, or from `tree` when given, plus the `qemu-patches/` of the
/// project: the nearest directory from `project` up that has one (scenario
/// sets such as `bench/scenarios/` live below the project root).
pub fn patched_qemu_spec(project: &Path, tree: Option<&Path>) -> images::QemuBuildSpec {
    let source = match tree {
        Some(t) => images::QemuSource::Tree(t.to_path_buf()),
        None => images::QemuSource::pinned(),
    };
    let patches = project
        .ancestors()
        .map(|d| d.join("qemu-patches"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| project.join("qemu-patches"));
    images::QemuBuildSpec::new(source, patches)
}

/// The binary and `-L` directories `variant` boots with.
pub fn qemu_for(
    variant: &Variant,
    stock: &Path,
    patched: Option<&images::QemuBuild>,
) -> (PathBuf, Vec<PathBuf>) {
    match (variant.qemu, patched) {
        (QemuKind::Patched, Some(b)) => (b.binary.clone(), b.data_dirs.clone()),
        // run.rs builds the patched QEMU whenever a patched variant is asked
        // for; without it, fall back to the stock binary visibly in the header
        _ => (stock.to_path_buf(), Vec::new()),
    }
}

/// `-L DIR` for each firmware directory, in order of preference.
pub fn firmware_args(data_dirs: &[PathBuf]) -> Vec<String> {
    data_dirs
        .iter()
        .flat_map(|d| ["-L".to_owned(), d.display().to_string()])
        .collect()
}

/// q35 on `accel`; with KVM and an IOMMU that remaps interrupts, the
/// IO-APIC in QEMU (`kernel-irqchip=split`), which QEMU's interrupt
/// remapping requires.
pub fn machine_args(accel: Accel, variant: &Variant) -> Vec<String> {
    let split = if accel == Accel::Kvm && variant.remaps_interrupts() {
        ",kernel-irqchip=split"
    } else {
        ""
    };
    strings(&["-machine", &format!("q35,accel={}{split}", accel.name())])
}

/// Whether the host's kvm_intel has nested VMX (`None`: not loaded).
pub fn host_nested_vmx() -> Option<bool> {
    let v = std::fs::read_to_string("/sys/module/kvm_intel/parameters/nested").ok()?;
    Some(matches!(v.trim(), "Y" | "y" | "1"))
}

pub fn cpu_args(variant: &Variant, smp: u32, memory_mib: u32) -> Vec<String> {
    strings(&[
        "-cpu",
        variant.cpu(),
        "-smp",
        &smp.to_string(),
        "-m",
        &format!("{memory_mib}M"),
    ])
}

/// Settings every boot shares: no default devices, no display, exit instead
/// of rebooting (a panicking kernel with panic=-1 then ends QEMU), and start
/// paused: the runner attaches QMP and resolves devices first, then sends
/// `cont`, so no guest event can precede the QMP greeting or go unseen.
///
/// A panic the guest reports through pvpanic pauses the VM instead of
/// shutting QEMU down: GUEST_PANICKED is then the only thing that happens,
/// so the runner cannot mistake a panic for QEMU dying.
pub fn base_args() -> Vec<String> {
    strings(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-S",
        "-action",
        "panic=pause",
    ])
}

/// Kernel command line: console on ttyS0 with every message (the log is
/// what a developer reads when something breaks), panic reboots at once (and
/// -no-reboot turns that into an exit), no check of the timer through the
/// IO-APIC, then the variant's own words. The timer check busy-waits a
/// calibrated delay for ticks; on a host loaded with other TCG guests the
/// delay misfires and intel-ir boots died with "timer doesn't work through
/// Interrupt-remapped IO-APIC" at 0.04 s (load average 13); the timer works.
///
/// With two or more L1 CPUs, `tsc=reliable` takes the TSC out of the
/// clocksource watchdog (the kernel's documented meaning: no runtime
/// verification, no boot-time stability checks). Under TCG every vCPU's
/// TSC is the host's clock, so there is nothing to verify, and the
/// watchdog hurt: its cross-CPU skew check spins with interrupts off
/// waiting for the other CPU, which sat in a stop_machine waiting for the
/// first, and under host load (every PAUSE costs about 1 ms under TCG) 3 of
/// 109 two-vCPU amd-avic boots hung there for good (docs/avic-emulation.md,
/// "Boot reliability"). With one CPU the skew check skips itself, and the
/// one-CPU variants run stock QEMU, whose lost interrupt requests
/// (docs/tcg-lost-wakeup.md) froze their L2 scenarios more often with it.
pub fn cmdline(variant: &Variant, smp: u32, devices: &[PciDevice], extra: &[String]) -> String {
    let mut words: Vec<String> = strings(&[
        "console=ttyS0",
        "panic=-1",
        "8250.nr_uarts=2",
        "no_timer_check",
    ]);
    if smp >= 2 {
        words.push("tsc=reliable".into());
    }
    if devices.iter().any(|d| d.sriov) {
        // vfio-pci refuses sriov_numvfs on a PF it owns without it
        words.push("vfio_pci.enable_sriov=1".to_owned());
    }
    words.extend(variant.cmdline().iter().map(|w| (*w).to_owned()));
    words.extend(extra.iter().cloned());
    words.join(" ")
}

pub fn boot_args(kernel: &Path, initrd: &Path, cmdline: &str) -> Vec<String> {
    vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline.to_owned(),
    ]
}

/// ttyS0 is the console, into a log file; ttyS1 is the agent's channel,
/// a socket the testbed listens on (so QEMU connects once it is ready).
pub fn serial_args(console_log: &Path, agent_socket: &Path) -> Vec<String> {
    vec![
        "-serial".into(),
        format!("file:{}", console_log.display()),
        "-chardev".into(),
        format!("socket,id=agent,path={}", agent_socket.display()),
        "-serial".into(),
        "chardev:agent".into(),
    ]
}

pub fn qmp_args(qmp_socket: &Path) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ]
}

/// pvpanic lets the guest report a panic to QEMU (GUEST_PANICKED on QMP).
pub fn panic_device_args() -> Vec<String> {
    strings(&["-device", "pvpanic"])
}

pub fn device_args(devices: &[PciDevice]) -> Vec<String> {
    let mut args = Vec::new();
    if devices.iter().any(|d| d.hotplug) {
        // Native PCIe hotplug (pciehp, the root port's own MSI) instead of
        // q35's ACPI hotplug: ACPI's SCI is an IO-APIC interrupt, which
        // QEMU's amd-iommu under TCG never delivers (see the amd-ir variant).
        args.push("-global".to_owned());
        args.push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".to_owned());
    }
    if devices.iter().any(|d| d.sriov) {
        // No 64-bit PCI window, so L1 places the VF BARs below 4 GiB: QEMU
        // 10.0.2 (Debian's stock QEMU here) maps a VF's 64-bit BAR at the
        // low 32 bits of its address only, so above 4 GiB the VF's
        // registers are unreachable (bugs/igb-vf-bar-above-4g.toml).
        args.push("-global".to_owned());
        args.push("q35-pcihost.pci-hole64-size=0".to_owned());
    }
    for (i, d) in devices.iter().enumerate() {
        if d.hotplug {
            // chassis/slot pairs must be unique among root ports
            args.push("-device".to_owned());
            args.push(format!(
                "pcie-root-port,id={},chassis={},slot={}",
                root_port_id(&d.id),
                i + 1,
                i + 1
            ));
        }
        let mut spec = format!("{},id={}", d.driver, d.id);
        if !d.props.is_empty() {
            spec.push(',');
            spec.push_str(&d.props);
        }
        if d.hotplug {
            spec.push_str(&format!(",bus={}", root_port_id(&d.id)));
        }
        if let Some(addr) = &d.addr {
            spec.push_str(&format!(",addr={addr}"));
        }
        if let Some(hub) = &d.hub {
            // hubs are numbered in order of first appearance
            let mut hubs: Vec<&String> = Vec::new();
            for h in devices.iter().filter_map(|d| d.hub.as_ref()) {
                if !hubs.contains(&h) {
                    hubs.push(h);
                }
            }
            let hubid = hubs.iter().position(|h| *h == hub).unwrap_or(0);
            args.push("-netdev".to_owned());
            args.push(format!("hubport,id=hp-{},hubid={hubid}", d.id));
            spec.push_str(&format!(",netdev=hp-{}", d.id));
        }
        args.push("-device".to_owned());
        args.push(spec);
    }
    args
}

/// The QEMU id of a hot-pluggable device's root port.
pub fn root_port_id(device: &str) -> String {
    format!("rp-{device}")
}

/// `device_add` properties that put a hot-pluggable device back where
/// `device_args` first placed it.
pub fn replug_props(d: &PciDevice) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = d
        .props
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect();
    props.push(("bus".to_owned(), root_port_id(&d.id)));
    props
}

/// Root-bus slots for QEMU `igb` PFs on variants that put a function at
/// 00:14.0 ([`crate::variant::SB_IOAPIC_FUNCTION`]). QEMU creates an igb's
/// eight VFs with the PF, at devfn PF + 0x80 + 2n: in slots s+16 and s+17
/// of a PF in slot s. Auto-assignment puts the first devices in slots 2 to
/// 4, and a PF in slot 3 or 4 would need 00:14.0 for a VF ("slot 20
/// function 0 not available for igbvf"). These slots keep the VFs clear
/// of 00:14.0, of ICH9 at 00:1f and of each other, and are above the slots
/// auto-assignment reaches with a scenario's handful of devices.
const SB_PF_SLOTS: &[u8] = &[0x0d, 0x0b, 0x09, 0x07, 0x05];

/// `devices` with a fixed slot from [`SB_PF_SLOTS`] for every igb PF on the
/// root bus that has none (hot-pluggable ones sit behind a root port, with
/// their VFs on its bus).
pub fn place_pfs_around_sb_function(devices: &[PciDevice]) -> Vec<PciDevice> {
    let taken: Vec<String> = devices.iter().filter_map(|d| d.addr.clone()).collect();
    let mut free = SB_PF_SLOTS
        .iter()
        .map(|s| format!("{s:02x}.0"))
        .filter(|a| !taken.contains(a));
    devices
        .iter()
        .map(|d| {
            let mut d = d.clone();
            if d.driver == "igb" && !d.hotplug && d.addr.is_none() {
                d.addr = free.next();
            }
            d
        })
        .collect()
}

/// The whole argument list, IOMMU before the devices it translates.
pub fn qemu_args(cfg: &BootConfig) -> Vec<String> {
    let devices = if cfg.variant.sb_ioapic_function() {
        place_pfs_around_sb_function(&cfg.devices)
    } else {
        cfg.devices.clone()
    };
    [
        machine_args(cfg.accel, cfg.variant),
        cpu_args(cfg.variant, cfg.smp, cfg.memory_mib),
        base_args(),
        firmware_args(&cfg.data_dirs),
        boot_args(
            &cfg.kernel,
            &cfg.initrd,
            &cmdline(cfg.variant, cfg.smp, &cfg.devices, &cfg.extra_cmdline),
        ),
        cfg.variant.iommu_args(),
        panic_device_args(),
        device_args(&devices),
        serial_args(&cfg.console_log, &cfg.agent_socket()),
        qmp_args(&cfg.qmp_socket()),
        cfg.extra_args.clone(),
    ]
    .concat()
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns `cmd` from a thread that lives as long as the testbed.
///
/// PR_SET_PDEATHSIG fires when the parent *thread* ends, not the process
/// (prctl(2)), and tokio's threads come and go: a worker that ran
/// `block_in_place` can end up in the blocking pool, which lets an idle
/// thread go after 10 s. A QEMU spawned from such a thread got SIGKILL in
/// the middle of a long scenario: "qemu exited unexpectedly (killed by
/// signal 9) during step 6 (fire)" in edu-posted-stress on amd-avic, in 2
/// of 5 matrix runs on 2026-12-06 (one 97-cell run, one 388-cell run).
fn spawn_from_a_lasting_thread(
    mut cmd: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<SpawnJob>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("qemu-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawning the QEMU spawner thread");
        std::sync::Mutex::new(tx)
    });
    // tokio's Command registers the child with the runtime it runs in
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = std::sync::mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        let _entered = runtime.enter();
        let _ = tx.send(cmd.spawn());
    });
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("the QEMU spawner's lock is poisoned"))?
        .send(job)
        .map_err(|_| std::io::Error::other("the QEMU spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the QEMU spawner thread dropped the request"))?
}

/// A running QEMU. Dropping it kills and reaps the process.
pub struct QemuProcess {
    child: tokio::process::Child,
    pub pid: u32,
}

impl QemuProcess {
    pub fn spawn(
        binary: &Path,
        args: &[String],
        stderr_log: &Path,
    ) -> std::io::Result<QemuProcess> {
        let stderr = std::fs::File::create(stderr_log)?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_from_a_lasting_thread(cmd)?;
        let pid = child.id().unwrap_or(0);
        Ok(QemuProcess { child, pid })
    }

    /// Waits for QEMU to exit on its own.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Waits up to `grace` for QEMU to exit, then kills it.
    pub async fn finish(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await
            }
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            // Reap synchronously: Drop may run while the runtime shuts down.
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Describes how QEMU ended, for error messages.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant;

    /// A child spawned with PR_SET_PDEATHSIG from a tokio blocking-pool
    /// thread dies when that thread goes idle and ends; one spawned through
    /// [`QemuProcess::spawn`] outlives it. `sleep` stands in for QEMU.
    #[test]
    fn qemu_outlives_the_thread_that_asked_for_it() {
        use std::os::unix::process::ExitStatusExt;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_keep_alive(Duration::from_millis(20))
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        rt.block_on(async {
            // as before: spawned on the thread that asked
            let mut direct = tokio::task::spawn_blocking(|| {
                let mut cmd = tokio::process::Command::new("sleep");
                cmd.arg("30");
                // SAFETY: as in QemuProcess::spawn
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                cmd.kill_on_drop(true).spawn().unwrap()
            })
            .await
            .unwrap();
            let mut qemu = {
                let log = log.clone();
                tokio::task::spawn_blocking(move || {
                    QemuProcess::spawn(Path::new("sleep"), &["30".into()], &log).unwrap()
                })
                .await
                .unwrap()
            };
            // the blocking thread ends after 20 ms idle
            let status = tokio::time::timeout(Duration::from_secs(10), direct.wait())
                .await
                .expect("the directly spawned child outlived its thread")
                .unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL));
            // and the thread that asked for QEMU has ended by now too
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                matches!(qemu.child.try_wait(), Ok(None)),
                "QEMU died with its thread"
            );
        });
    }

    fn config(variant: &str) -> BootConfig {
        BootConfig {
            qemu: "qemu-system-x86_64".into(),
            data_dirs: Vec::new(),
            variant: variant::lookup(variant).unwrap(),
            accel: Accel::Tcg,
            kernel: "/k/bzImage".into(),
            initrd: "/k/initrd".into(),
            extra_cmdline: vec!["quiet".into()],
            devices: vec![
                PciDevice {
                    id: "dev0".into(),
                    driver: "edu".into(),
                    props: String::new(),
                    hotplug: false,
                    addr: None,
                    sriov: false,
                    hub: None,
                },
                PciDevice {
                    id: "dev1".into(),
                    driver: "edu".into(),
                    props: String::new(),
                    hotplug: false,
                    addr: Some("05.0".into()),
                    sriov: false,
                    hub: None,
                },
                PciDevice {
                    id: "nic0".into(),
                    driver: "igb".into(),
                    props: "romfile=".into(),
                    hotplug: true,
                    addr: None,
                    sriov: false,
                    hub: None,
                },
            ],
            memory_mib: 1024,
            smp: 1,
            extra_args: Vec::new(),
            runtime_dir: "/run/t".into(),
            console_log: "/log/console.log".into(),
        }
    }

    #[test]
    fn patches_are_found_above_a_nested_scenario_set() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("qemu-patches")).unwrap();
        std::fs::create_dir_all(root.path().join("bench")).unwrap();
        let spec = patched_qemu_spec(&root.path().join("bench"), None);
        assert_eq!(spec.patches_dir, root.path().join("qemu-patches"));
    }

    #[test]
    fn iommu_comes_before_devices() {
        let args = qemu_args(&config("amd-ir"));
        let iommu = args
            .iter()
            .position(|a| a.starts_with("amd-iommu"))
            .unwrap();
        let dev = args.iter().position(|a| a.starts_with("edu,")).unwrap();
        assert!(iommu < dev);
        assert!(args.contains(&"edu,id=dev1,addr=05.0".to_owned()));
        assert!(
            args.contains(&"igb,id=nic0,romfile=,bus=rp-nic0".to_owned()),
            "a NIC boots no option ROM"
        );
        let port = args
            .iter()
            .position(|a| a == "pcie-root-port,id=rp-nic0,chassis=3,slot=3")
            .unwrap();
        let nic = args.iter().position(|a| a.starts_with("igb,")).unwrap();
        assert!(port < nic, "the root port comes before the device on it");
        let nic0 = &config("amd-ir").devices[2];
        assert_eq!(
            replug_props(nic0),
            [
                ("romfile".to_owned(), String::new()),
                ("bus".to_owned(), "rp-nic0".to_owned())
            ]
        );
    }

    #[test]
    fn igb_pfs_keep_their_vfs_off_the_sb_function() {
        let pf = |id: &str, addr: Option<&str>, hotplug: bool| PciDevice {
            id: id.into(),
            driver: "igb".into(),
            props: "romfile=".into(),
            hotplug,
            addr: addr.map(Into::into),
            sriov: false,
            hub: None,
        };
        let mut cfg = config("amd-ir-patched");
        cfg.devices = vec![
            pf("nic0", None, false),
            pf("nic1", Some("0d.0"), false),
            pf("nic2", None, false),
            pf("nic3", None, true),
        ];
        let args = qemu_args(&cfg);
        // nic1 pinned 0d.0 itself: the others take the next free slots
        for want in [
            "igb,id=nic0,romfile=,addr=0b.0",
            "igb,id=nic1,romfile=,addr=0d.0",
            "igb,id=nic2,romfile=,addr=09.0",
        ] {
            assert!(args.contains(&want.to_owned()), "{want}: {args:?}");
        }
        assert!(args.contains(&"igb,id=nic3,romfile=,bus=rp-nic3".to_owned()));
        // no slot a PF gets has a VF (devfn + 0x80 + 2n, n < 8) at 00:14.0
        // or 00:1f.x, nor shares a VF slot with another
        let mut vf_slots = Vec::new();
        for &slot in SB_PF_SLOTS {
            let vfs: Vec<u32> = (0..8)
                .map(|n| (u32::from(slot) * 8 + 0x80 + 2 * n) >> 3)
                .collect();
            assert!(
                vfs.iter().all(|&s| s != 0x14 && s < 0x1f),
                "slot {slot:#x}: {vfs:?}"
            );
            assert!(vfs.iter().all(|s| !vf_slots.contains(s)), "slot {slot:#x}");
            vf_slots.extend(vfs);
        }
        // the reason: a PF in slot 3 (where auto-assignment would put it)
        assert!((0..8).any(|n| (3 * 8 + 0x80 + 2 * n) >> 3 == 0x14));
        // stock QEMU has no function at 00:14.0: nothing moves there
        cfg.variant = variant::lookup("amd-ir").unwrap();
        assert!(qemu_args(&cfg).contains(&"igb,id=nic0,romfile=".to_owned()));
    }

    #[test]
    fn firmware_dirs_become_dash_l() {
        assert!(!qemu_args(&config("amd-ir")).contains(&"-L".to_owned()));
        let mut cfg = config("amd-ir-patched");
        cfg.data_dirs = vec!["/usr/share/qemu".into(), "/usr/share/seabios".into()];
        let args = qemu_args(&cfg);
        let l: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-L")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(l, ["/usr/share/qemu", "/usr/share/seabios"]);
    }

    #[test]
    fn command_line_carries_variant_words() {
        let cfg = config("none");
        let line = cmdline(cfg.variant, cfg.smp, &cfg.devices, &cfg.extra_cmdline);
        assert_eq!(
            line,
            "console=ttyS0 panic=-1 8250.nr_uarts=2 no_timer_check vfio.enable_unsafe_noiommu_mode=1 quiet"
        );
        // two CPUs: the TSC leaves the clocksource watchdog
        assert_eq!(
            cmdline(cfg.variant, 2, &cfg.devices, &cfg.extra_cmdline),
            "console=ttyS0 panic=-1 8250.nr_uarts=2 no_timer_check tsc=reliable vfio.enable_unsafe_noiommu_mode=1 quiet"
        );
    }

    #[test]
    fn an_sriov_pf_gets_vfio_sriov_and_no_64_bit_window() {
        let mut cfg = config("intel-ir");
        let global = "q35-pcihost.pci-hole64-size=0".to_owned();
        assert!(!qemu_args(&cfg).contains(&global));
        assert!(!cmdline(cfg.variant, cfg.smp, &cfg.devices, &[]).contains("enable_sriov"));
        cfg.devices[2].sriov = true;
        let args = qemu_args(&cfg);
        let at = args.iter().position(|a| *a == global).unwrap();
        assert_eq!(args[at - 1], "-global");
        assert!(
            cmdline(cfg.variant, cfg.smp, &cfg.devices, &[]).contains(" vfio_pci.enable_sriov=1")
        );
    }

    #[test]
    fn sockets_live_in_the_runtime_dir() {
        let args = qemu_args(&config("intel-ir"));
        assert!(args.contains(&"unix:/run/t/qmp.sock,server=on,wait=off".to_owned()));
        assert!(args.contains(&"socket,id=agent,path=/run/t/agent.sock".to_owned()));
        assert!(args.contains(&"file:/log/console.log".to_owned()));
    }

    #[test]
    fn kvm_with_interrupt_remapping_splits_the_irqchip() {
        let v = |n| variant::lookup(n).unwrap();
        let m = |a, n| machine_args(a, v(n)).join(" ");
        assert_eq!(m(Accel::Tcg, "intel-vmx-posted"), "-machine q35,accel=tcg");
        assert_eq!(
            m(Accel::Kvm, "intel-vmx-posted"),
            "-machine q35,accel=kvm,kernel-irqchip=split"
        );
        assert_eq!(
            m(Accel::Kvm, "amd-ir"),
            "-machine q35,accel=kvm,kernel-irqchip=split"
        );
        // no interrupt remapping: the in-kernel IO-APIC is fine
        assert_eq!(m(Accel::Kvm, "virtio-iommu"), "-machine q35,accel=kvm");
        assert_eq!(m(Accel::Kvm, "none"), "-machine q35,accel=kvm");
    }

    /// The whole command line of the variant that only KVM hosts with
    /// nested VMX run: the host CPU, two of them, the posting intel-iommu,
    /// the split irqchip.
    #[test]
    fn vmx_posted_command_line() {
        let mut cfg = config("intel-vmx-posted");
        cfg.accel = Accel::Kvm;
        cfg.smp = cfg.variant.smp;
        let args = qemu_args(&cfg).join(" ");
        for want in [
            "-machine q35,accel=kvm,kernel-irqchip=split",
            "-cpu host -smp 2",
            "-device intel-iommu,id=vtd0,intremap=on,eim=on,posted-interrupts=on",
        ] {
            assert!(args.contains(want), "{want}: {args}");
        }
        let line = cmdline(cfg.variant, cfg.smp, &cfg.devices, &[]);
        assert!(line.ends_with("tsc=reliable intel_iommu=on"), "{line}");
    }
}
