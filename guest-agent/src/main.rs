//! `testbed-agent`: the main process of the L1 guest. Loads modules, sets up
//! tracing, then executes the host's jobs received over `/dev/ttyS1`.

mod attrib;
mod evcount;
mod exec;
mod genl;
mod interrupts;
mod kvm;
mod kvmmod;
mod l2;
mod l2ctl;
mod l2link;
mod l2linux;
mod modules;
mod nested;
mod platform;
mod resume;
mod runner;
mod scaling;
mod serial;
#[macro_use]
mod sys;
mod trace;
mod vdpa;
mod vfio;
mod watchdog;

use std::path::Path;
use std::time::Instant;

use wire::{AgentMessage, HostMessage, Platform, Ready, PROTOCOL_VERSION};

const AGENT_PORT: &str = "/dev/ttyS1";
pub const MODULES_ORDER: &str = "/etc/testbed/modules.order";

/// `testbed_l2=1` (and `testbed_l2.queues=N`) on the kernel command line:
/// this agent runs in a real L2 started by an L1 agent.
fn l2_role(cmdline: &str) -> Option<u32> {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    if !words.contains(&"testbed_l2=1") {
        return None;
    }
    let queues = words
        .iter()
        .find_map(|w| w.strip_prefix("testbed_l2.queues="))
        .and_then(|q| q.parse().ok())
        .unwrap_or(wire::L2_DEFAULT_QUEUES);
    Some(queues)
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("PANIC: {info}");
        sys::log(&msg);
        eprintln!("testbed-agent: {msg}");
    }));
    let t0 = Instant::now();
    // userspace printk is rate limited by default; the console log wants all of it
    let _ = sys::write_attr("/proc/sys/kernel/printk_devkmsg", "on\n");
    say!("starting");
    // opened before anything loads, so the first read holds the boot's warnings
    let mut kernel_log = platform::KernelLog::open()
        .map_err(|e| say!("/dev/kmsg: {e}"))
        .ok();

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debug = cmdline
        .split_whitespace()
        .any(|a| a == "testbed_agent.debug=1");
    let mut platform = Platform::default();
    let release = platform::kernel_release();
    let moddir = Path::new("/lib/modules").join(&release);
    let loaded = modules::load_all(Path::new(MODULES_ORDER), &moddir, &cmdline);
    platform.modules_loaded = loaded.loaded;
    platform.modules_failed = loaded.failed;
    if let Some(queues) = l2_role(&cmdline) {
        say!(
            "L2 role, modules loaded after {} ms",
            t0.elapsed().as_millis()
        );
        l2linux::main(queues);
    }
    platform::collect(&mut platform);

    let eventfd_arg = platform::version_of(&release) >= (6, 17);
    let tracer = match trace::Tracer::setup(eventfd_arg) {
        Ok(t) => {
            say!(
                "tracing in {}{}",
                t.dir.display(),
                if t.private_instance {
                    ""
                } else {
                    " (top-level buffer)"
                }
            );
            platform.tracing_failed = t.failed.clone();
            Some(t)
        }
        Err(e) => {
            platform.tracing_failed = vec![format!("tracing: {e}")];
            None
        }
    };
    for f in &platform.tracing_failed {
        say!("tracing problem: {f}");
    }

    let mut port = loop {
        match serial::Port::open(AGENT_PORT) {
            Ok(p) => break p,
            Err(e) => {
                say!("open {AGENT_PORT}: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    platform.boot_warnings = kernel_log
        .as_mut()
        .map(|k| k.new_warnings())
        .unwrap_or_default();
    // what a restore must put back, and where the kernel log stood, as saved
    let pci_headers = resume::PciHeaders::read();
    let mut resume_log = platform::KernelLog::open().ok().map(|mut k| {
        k.read_new();
        k
    });
    let mut ready = Ready {
        protocol: PROTOCOL_VERSION,
        platform,
        resume: None,
    };
    if let Err(e) = port.send(&AgentMessage::Ready(ready.clone())) {
        say!("sending ready: {e}");
    }
    say!("ready after {} ms of agent time", t0.elapsed().as_millis());

    watchdog::start();
    let mut runner = runner::Runner::new(tracer, debug, kernel_log);
    loop {
        let line = match port.read_line() {
            Ok(l) => l,
            Err(e) => {
                // a broken port: reopen it rather than spin
                say!("reading {AGENT_PORT}: {e}; reopening");
                std::thread::sleep(std::time::Duration::from_millis(500));
                if let Ok(p) = serial::Port::open(AGENT_PORT) {
                    port = p;
                }
                continue;
            }
        };
        let msg: HostMessage = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                let _ = port.send(&AgentMessage::Failed {
                    message: format!("bad message: {e}"),
                });
                continue;
            }
        };
        match msg {
            HostMessage::Poweroff => {
                say!("power off");
                // SAFETY: plain syscalls.
                unsafe {
                    libc::sync();
                    libc::reboot(libc::RB_POWER_OFF);
                }
                // not PID 1 or not permitted: just leave
                std::process::exit(0);
            }
            HostMessage::Exec(job) => {
                watchdog::busy(true);
                let result = exec::run(
                    &job,
                    &mut |msg| {
                        if let Err(e) = port.send(&msg) {
                            say!("sending output of {}: {e}", job.name);
                        }
                    },
                    &mut || runner.new_kernel_warnings(),
                );
                watchdog::busy(false);
                if let Err(e) = port.send(&AgentMessage::Exited(result)) {
                    say!("sending the end of {}: {e}", job.name);
                }
            }
            HostMessage::Scaling(job) => {
                watchdog::busy(true);
                // warnings from before the job are not its own
                let _ = runner.new_kernel_warnings();
                let mut done = scaling::run(&job, runner.tracer.as_mut(), &mut |msg| {
                    if let Err(e) = port.send(&msg) {
                        say!("sending a scaling message: {e}");
                    }
                });
                done.kernel_warnings = runner.new_kernel_warnings();
                watchdog::busy(false);
                if let Err(e) = port.send(&AgentMessage::ScalingDone(done)) {
                    say!("sending the end of the scaling job: {e}");
                }
            }
            HostMessage::Resumed { unix_time_ns } => {
                ready.resume = Some(Box::new(resume::resume(
                    unix_time_ns,
                    &pci_headers,
                    resume_log.as_mut(),
                )));
                if let Err(e) = port.send(&AgentMessage::Ready(ready.clone())) {
                    say!("sending ready after resume: {e}");
                }
            }
            HostMessage::HostActionDone { .. } => {
                let _ = port.send(&AgentMessage::Failed {
                    message: "host-action-done outside a step".into(),
                });
            }
            HostMessage::Run(job) => {
                watchdog::busy(true);
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut send_err = None;
                    let shared = std::cell::RefCell::new(&mut port);
                    let done = runner.run(
                        &job,
                        &mut |msg| {
                            if let Err(e) = shared.borrow_mut().send(&msg) {
                                send_err = Some(e);
                            }
                        },
                        &mut |timeout| match shared.borrow_mut().read_line_timeout(timeout) {
                            Ok(None) => Ok(None),
                            Ok(Some(line)) => serde_json::from_str::<HostMessage>(&line)
                                .map(Some)
                                .map_err(|e| format!("bad message from the host: {e}")),
                            Err(e) => Err(format!("reading {AGENT_PORT}: {e}")),
                        },
                    );
                    if let Some(e) = send_err {
                        say!("sending step report: {e}");
                    }
                    done
                }));
                watchdog::busy(false);
                let msg = match result {
                    Ok(done) => AgentMessage::Done(done),
                    Err(_) => AgentMessage::Failed {
                        message: format!("agent panicked while running {}", job.scenario),
                    },
                };
                if let Err(e) = port.send(&msg) {
                    say!("sending done: {e}");
                }
            }
        }
    }
}
