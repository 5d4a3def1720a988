//! tracefs: kprobes on irqbypass and KVM's connect callbacks, the
//! `kvm:kvm_msi_set_irq` event, and a parser for the lines they produce.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys::{append_attr, write_attr};

/// The kprobe event group the agent owns.
pub const GROUP: &str = "testbed";
const INSTANCE: &str = "testbed";

/// One kernel event the agent cares about, kernel pointers still raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KEvent {
    /// `vfio_name`: the producer's VFIO IRQ name (`vfio-msix[3](0000:00:04.0)`)
    /// when it is a VFIO producer.
    ProdReg {
        ptr: u64,
        eventfd: Option<u64>,
        vfio_name: Option<String>,
    },
    ProdRegRet {
        ret: i64,
    },
    ProdUnreg {
        ptr: u64,
    },
    ConsReg {
        ptr: u64,
        eventfd: Option<u64>,
    },
    ConsRegRet {
        ret: i64,
    },
    ConsUnreg {
        ptr: u64,
    },
    /// `kvm_arch_irq_bypass_add_producer(cons, prod)` entry.
    Connect {
        cons: u64,
        prod: u64,
    },
    ConnectRet {
        ret: i64,
    },
    /// `kvm_arch_irq_bypass_del_producer(cons, prod)` entry.
    Disconnect {
        cons: u64,
        prod: u64,
    },
    /// `eventfd_release(inode, file)`: an eventfd's file is closed, so no
    /// later registration can name this eventfd: one at its address after
    /// this is on another eventfd (freed, its memory reused).
    EventfdRelease {
        ctx: u64,
    },
    /// `kvm_msi_set_irq`: destination APIC ID and vector (low byte of data).
    Msi {
        dst: u64,
        vec: u32,
    },
    /// `kvm_set_irq`: a GSI's level set (irqfd injection of an IOAPIC route).
    SetIrq {
        gsi: u32,
        level: u32,
    },
    /// `kvm_ack_irq`: an EOI reached KVM's ack notifiers for an IOAPIC pin.
    AckIrq {
        pin: u32,
    },
    /// `vfio_pci_intx_unmask_handler` ran (VFIO unmasks a device's INTx).
    IntxUnmask,
    /// `kvm_avic_unaccelerated_access` for a trapped write of the EOI
    /// register: AVIC left the EOI of level-triggered `vec` to KVM.
    AvicEoiTrap {
        vec: u32,
    },
    /// The ring buffer dropped events.
    Lost {
        count: u64,
    },
}

/// A parsed trace line: the task's pid and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    pub pid: u32,
    /// Hard-irq context (`h` or `H` in the latency flags), where irqfd's fast path runs.
    pub hardirq: bool,
    pub event: KEvent,
}

/// The kprobe definitions: (event name, probe type, symbol, fetch args).
/// `eventfd_arg`: the kernel passes the eventfd as the 2nd argument (6.17+);
/// then eventfds whose file is closed are traced too, because a freed
/// eventfd's address is soon another eventfd's (see `attrib`). Its context
/// is `file->private_data`, read through BTF (kernels have had BTF field
/// access in probe arguments since 6.7).
pub fn probe_defs(eventfd_arg: bool) -> Vec<(&'static str, String)> {
    let ev = if eventfd_arg { " eventfd=%si:x64" } else { "" };
    let mut defs = vec![
        (
            "prod_reg",
            // vfio_name: a VFIO producer sits in its vfio_pci_irq_ctx right
            // after `char *name; bool masked;`, so the name pointer is 16
            // bytes before it (any other producer reads garbage or a fault,
            // and is named by its step instead)
            format!("p:{GROUP}/prod_reg irq_bypass_register_producer ptr=%di:x64{ev} vfio_name=+0(-16(%di)):string"),
        ),
        (
            "prod_reg_ret",
            format!("r:{GROUP}/prod_reg_ret irq_bypass_register_producer ret=$retval:s32"),
        ),
        (
            "prod_unreg",
            format!("p:{GROUP}/prod_unreg irq_bypass_unregister_producer ptr=%di:x64"),
        ),
        (
            "cons_reg",
            format!("p:{GROUP}/cons_reg irq_bypass_register_consumer ptr=%di:x64{ev}"),
        ),
        (
            "cons_reg_ret",
            format!("r:{GROUP}/cons_reg_ret irq_bypass_register_consumer ret=$retval:s32"),
        ),
        (
            "cons_unreg",
            format!("p:{GROUP}/cons_unreg irq_bypass_unregister_consumer ptr=%di:x64"),
        ),
        (
            "kvm_connect",
            format!(
                "p:{GROUP}/kvm_connect kvm:kvm_arch_irq_bypass_add_producer cons=%di:x64 prod=%si:x64"
            ),
        ),
        (
            "kvm_connect_ret",
            format!(
                "r:{GROUP}/kvm_connect_ret kvm:kvm_arch_irq_bypass_add_producer ret=$retval:s32"
            ),
        ),
        (
            "kvm_disconnect",
            format!(
                "p:{GROUP}/kvm_disconnect kvm:kvm_arch_irq_bypass_del_producer cons=%di:x64 prod=%si:x64"
            ),
        ),
        (
            "intx_unmask",
            format!("p:{GROUP}/intx_unmask vfio_pci_core:vfio_pci_intx_unmask_handler"),
        ),
    ];
    if eventfd_arg {
        defs.push((
            "eventfd_release",
            format!("p:{GROUP}/eventfd_release eventfd_release ctx=file->private_data:x64"),
        ));
    }
    defs
}

fn parse_num(v: &str) -> Option<i64> {
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok().map(|x| x as i64)
    } else {
        v.parse::<i64>().ok()
    }
}

/// `key="text"` in a kprobe line.
fn quoted(args: &str, key: &str) -> Option<String> {
    let start = args.find(&format!("{key}=\""))? + key.len() + 2;
    let len = args[start..].find('"')?;
    Some(args[start..start + len].to_string())
}

fn field(args: &str, key: &str) -> Option<i64> {
    args.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| parse_num(v))
}

/// One line of `trace`/`trace_pipe` output split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub pid: u32,
    /// Hard-irq context (`h` or `H` in the latency flags).
    pub hardirq: bool,
    /// The event's name, e.g. `kvm_avic_doorbell` or `prod_reg`.
    pub name: &'a str,
    /// What the event printed after its name.
    pub args: &'a str,
}

/// Splits a trace line ("<comm>-<pid> [cpu] <flags> <ts>: <event>: <args>")
/// into its fields; headers, `[LOST n EVENTS]` lines and garbage give `None`.
pub fn split_line(line: &str) -> Option<Fields<'_>> {
    if line.trim_start().starts_with('#') {
        return None;
    }
    // comm may contain spaces or dashes, so anchor on the "[cpu]" field.
    let open = find_cpu_field(line)?;
    let close = open + line[open..].find(']')?;
    let head = line[..open].trim_end();
    let pid = head.rsplit('-').next()?.trim().parse().unwrap_or(0);
    let rest = &line[close + 1..];
    let mut toks = rest.split_whitespace();
    let mut hardirq = false;
    // optional latency flags, then the timestamp "123.456789:"
    let mut tok = toks.next()?;
    if !tok.ends_with(':') {
        hardirq = tok.chars().nth(2).is_some_and(|c| c == 'h' || c == 'H');
        tok = toks.next()?;
    }
    tok.strip_suffix(':')?.parse::<f64>().ok()?;
    let ts_end = rest.find(tok)? + tok.len();
    let after_ts = rest[ts_end..].trim_start();
    let (name, args) = after_ts
        .split_once(": ")
        .unwrap_or((after_ts.trim_end_matches(':'), ""));
    Some(Fields {
        pid,
        hardirq,
        name,
        args,
    })
}

/// The count of a `[LOST n EVENTS]` line.
pub fn lost_events(line: &str) -> Option<u64> {
    let i = line.find("[LOST ")?;
    line[i + 6..].split_whitespace().next()?.parse().ok()
}

/// Parse one line of `trace`/`trace_pipe` output. Lines of other events, headers
/// and garbage give `None`.
pub fn parse_line(line: &str) -> Option<TraceRecord> {
    if line.contains("[LOST ") {
        return Some(TraceRecord {
            pid: 0,
            hardirq: false,
            event: KEvent::Lost {
                count: lost_events(line)?,
            },
        });
    }
    let Fields {
        pid,
        hardirq,
        name,
        args,
    } = split_line(line)?;
    let args = match args.trim_start().strip_prefix('(') {
        // kprobe lines start with "(sym+off/size [mod])" or "(caller <- sym)"
        Some(a) => a.split_once(')').map(|x| x.1).unwrap_or(""),
        None => args,
    };
    let event = match name {
        "prod_reg" => KEvent::ProdReg {
            ptr: field(args, "ptr")? as u64,
            eventfd: field(args, "eventfd").map(|v| v as u64),
            vfio_name: quoted(args, "vfio_name").filter(|n| n.starts_with("vfio-msi")),
        },
        "prod_reg_ret" => KEvent::ProdRegRet {
            ret: field(args, "ret")?,
        },
        "prod_unreg" => KEvent::ProdUnreg {
            ptr: field(args, "ptr")? as u64,
        },
        "cons_reg" => KEvent::ConsReg {
            ptr: field(args, "ptr")? as u64,
            eventfd: field(args, "eventfd").map(|v| v as u64),
        },
        "cons_reg_ret" => KEvent::ConsRegRet {
            ret: field(args, "ret")?,
        },
        "cons_unreg" => KEvent::ConsUnreg {
            ptr: field(args, "ptr")? as u64,
        },
        "kvm_connect" => KEvent::Connect {
            cons: field(args, "cons")? as u64,
            prod: field(args, "prod")? as u64,
        },
        "kvm_connect_ret" => KEvent::ConnectRet {
            ret: field(args, "ret")?,
        },
        "kvm_disconnect" => KEvent::Disconnect {
            cons: field(args, "cons")? as u64,
            prod: field(args, "prod")? as u64,
        },
        "eventfd_release" => KEvent::EventfdRelease {
            ctx: field(args, "ctx")? as u64,
        },
        "intx_unmask" => KEvent::IntxUnmask,
        "kvm_set_irq" => {
            // "gsi 16 level 1 source 2"
            let mut it = args.split_whitespace();
            let (mut gsi, mut level) = (None, None);
            while let Some(t) = it.next() {
                match t {
                    "gsi" => gsi = it.next().and_then(|v| v.parse().ok()),
                    "level" => level = it.next().and_then(|v| v.parse().ok()),
                    _ => {}
                }
            }
            KEvent::SetIrq {
                gsi: gsi?,
                level: level?,
            }
        }
        "kvm_ack_irq" => {
            // "irqchip IOAPIC pin 16"
            let pin = args
                .split_whitespace()
                .skip_while(|t| *t != "pin")
                .nth(1)?
                .parse()
                .ok()?;
            if !args.contains("IOAPIC") {
                return None;
            }
            KEvent::AckIrq { pin }
        }
        "kvm_avic_unaccelerated_access" => {
            // "vcpu=0, offset=0xb0(APIC_EOI), trap, write, vec=0x40"
            let mut offset = None;
            let mut vec = None;
            let (mut trap, mut write) = (false, false);
            for t in args.split(',').map(str::trim) {
                if let Some(v) = t.strip_prefix("offset=") {
                    offset = parse_num(v.split('(').next().unwrap_or(v));
                } else if let Some(v) = t.strip_prefix("vec=") {
                    vec = parse_num(v);
                }
                trap |= t == "trap";
                write |= t == "write";
            }
            if offset? != 0xb0 || !trap || !write {
                return None;
            }
            KEvent::AvicEoiTrap {
                vec: u32::try_from(vec?).ok()?,
            }
        }
        "kvm_msi_set_irq" => {
            // "dst 0 vec 65 (Fixed|physical|edge)"
            let mut it = args.split_whitespace();
            let mut dst = None;
            let mut vec = None;
            while let Some(t) = it.next() {
                match t {
                    "dst" => dst = it.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
                    "vec" => vec = it.next().and_then(|v| v.parse().ok()),
                    _ => {}
                }
            }
            KEvent::Msi {
                dst: dst?,
                vec: vec?,
            }
        }
        _ => return None,
    };
    Some(TraceRecord {
        pid,
        hardirq,
        event,
    })
}

/// Byte index of the "[NNN]" cpu field.
fn find_cpu_field(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(off) = line[i..].find('[') {
        let s = i + off;
        let mut j = s + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > s + 1 && j < b.len() && b[j] == b']' {
            return Some(s);
        }
        i = s + 1;
    }
    None
}

/// The agent's view of tracefs.
pub struct Tracer {
    /// Directory whose `events/` and `trace_pipe` the agent uses.
    pub dir: PathBuf,
    pipe: File,
    partial: Vec<u8>,
    /// Probes or events that could not be placed or enabled, with the reason.
    pub failed: Vec<String>,
    /// Whether the private instance is in use (else the top-level buffer).
    pub private_instance: bool,
}

impl Tracer {
    /// Place the probes and enable them. `eventfd_arg`: kernel >= 6.17.
    pub fn setup(eventfd_arg: bool) -> anyhow::Result<Tracer> {
        let root = find_tracefs()?;
        let mut failed = Vec::new();
        let kprobe_events = root.join("kprobe_events");
        // a restarted agent finds its old probes: remove them first
        for (name, _) in probe_defs(eventfd_arg) {
            let _ = append_attr(&kprobe_events, &format!("-:{GROUP}/{name}"));
        }
        let mut placed = Vec::new();
        for (name, def) in probe_defs(eventfd_arg) {
            match append_attr(&kprobe_events, &def) {
                Ok(()) => placed.push(name),
                Err(e) => {
                    // "MOD:SYM" is refused by some kernels: retry with the bare symbol
                    let bare = def.replace(" kvm:", " ").replace(" vfio_pci_core:", " ");
                    if bare != def && append_attr(&kprobe_events, &bare).is_ok() {
                        placed.push(name);
                    } else {
                        let sym = def.split_whitespace().nth(1).unwrap_or("?");
                        failed.push(format!("kprobe {name} on {sym}: {e}"));
                    }
                }
            }
        }
        let inst = root.join("instances").join(INSTANCE);
        let mut dirs = Vec::new();
        match std::fs::create_dir(&inst) {
            Ok(()) => dirs.push(inst),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => dirs.push(inst),
            Err(_) => {}
        }
        dirs.push(root.clone());
        let mut last_err = Vec::new();
        for dir in dirs {
            let private_instance = dir != root;
            last_err.clear();
            let _ = write_attr(dir.join("buffer_size_kb"), "2048");
            let mut enabled = Vec::new();
            for name in &placed {
                let p = dir.join("events").join(GROUP).join(name).join("enable");
                match write_attr(&p, "1") {
                    Ok(()) => enabled.push(p),
                    Err(e) => last_err.push(format!("enable {GROUP}/{name}: {e}")),
                }
            }
            if !last_err.is_empty() && private_instance {
                // kprobe events cannot be enabled in instances here: top level
                for p in enabled {
                    let _ = write_attr(p, "0");
                }
                continue;
            }
            failed.append(&mut last_err);
            for event in [
                "kvm_msi_set_irq",
                "kvm_set_irq",
                "kvm_ack_irq",
                "kvm_avic_unaccelerated_access",
            ] {
                let p = dir.join("events/kvm").join(event).join("enable");
                if let Err(e) = write_attr(&p, "1") {
                    failed.push(format!("event kvm:{event}: {e}"));
                }
            }
            let _ = write_attr(dir.join("tracing_on"), "1");
            let pipe = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(dir.join("trace_pipe"))
                .map_err(|e| anyhow::anyhow!("open {}/trace_pipe: {e}", dir.display()))?;
            return Ok(Tracer {
                dir,
                pipe,
                partial: Vec::new(),
                failed,
                private_instance,
            });
        }
        anyhow::bail!("no usable trace buffer: {}", last_err.join("; "))
    }

    /// Read everything the buffer holds now; complete lines only.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; 65536];
        loop {
            match self.pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: empty
            }
        }
        let mut lines = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&c| c == b'\n') {
            let l: Vec<u8> = self.partial.drain(..=nl).collect();
            lines.push(String::from_utf8_lossy(&l[..l.len() - 1]).into_owned());
        }
        lines
    }

    /// Forget everything traced so far (the mark before a step).
    pub fn mark(&mut self) {
        let _ = self.drain_lines();
        self.partial.clear();
    }
}

fn find_tracefs() -> anyhow::Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("kprobe_events").exists() {
            return Ok(PathBuf::from(p));
        }
    }
    // init did not mount it: try ourselves
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 && Path::new("/sys/kernel/tracing/kprobe_events").exists() {
        return Ok(PathBuf::from("/sys/kernel/tracing"));
    }
    anyhow::bail!("tracefs with kprobe_events not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kprobe_entry_line() {
        let l = "   testbed-agent-1       [000] .....    12.345678: prod_reg: \
                 (irq_bypass_register_producer+0x0/0x230 [irqbypass]) ptr=0xffff888003a1c228 eventfd=0xffff888003b7e000";
        let r = parse_line(l).unwrap();
        assert_eq!(r.pid, 1);
        assert_eq!(
            r.event,
            KEvent::ProdReg {
                ptr: 0xffff888003a1c228,
                eventfd: Some(0xffff888003b7e000),
                vfio_name: None
            }
        );
    }

    #[test]
    fn kretprobe_line() {
        let l = " testbed-agent-1 [000] ..... 12.3: cons_reg_ret: \
                 (kvm_irqfd+0x5d2/0x7f0 [kvm] <- irq_bypass_register_consumer) ret=-16";
        assert_eq!(
            parse_line(l).unwrap().event,
            KEvent::ConsRegRet { ret: -16 }
        );
    }

    #[test]
    fn msi_line_and_flags() {
        let l = "   kworker/0:1-12      [000] .....    40.1: kvm_set_irq: gsi 16 level 1 source 2";
        assert_eq!(
            parse_line(l).unwrap().event,
            KEvent::SetIrq { gsi: 16, level: 1 }
        );
        let l = "  testbed-agent-90    [000] .....    40.2: kvm_ack_irq: irqchip IOAPIC pin 16";
        assert_eq!(parse_line(l).unwrap().event, KEvent::AckIrq { pin: 16 });
        let l = "  testbed-agent-90    [000] .....    40.2: kvm_ack_irq: irqchip PIC slave pin 3";
        assert_eq!(parse_line(l), None);
        let l = "  testbed-agent-90    [000] d..1.    40.3: intx_unmask: (vfio_pci_intx_unmask_handler+0x0/0xa0 [vfio_pci_core])";
        assert_eq!(parse_line(l).unwrap().event, KEvent::IntxUnmask);
        let l = "          <idle>-0       [000] d.h2.    33.445566: kvm_msi_set_irq: dst 0 vec 65 (Fixed|physical|edge)";
        let r = parse_line(l).unwrap();
        assert_eq!(r.event, KEvent::Msi { dst: 0, vec: 65 });
        assert!(r.hardirq);
        assert_eq!(r.pid, 0);
    }

    #[test]
    fn avic_eoi_traps() {
        // a trapped EOI write of a level-triggered vector
        let l = " CPU 0/KVM-123     [000] d..1.    41.0: kvm_avic_unaccelerated_access: vcpu=0, offset=0xb0(APIC_EOI), trap, write, vec=0x40";
        assert_eq!(
            parse_line(l).unwrap().event,
            KEvent::AvicEoiTrap { vec: 0x40 }
        );
        // other registers and faults are not EOI traps
        let l = " CPU 0/KVM-123     [000] d..1.    41.0: kvm_avic_unaccelerated_access: vcpu=0, offset=0x300(APIC_ICR), trap, write, vec=0x0";
        assert_eq!(parse_line(l), None);
        let l = " CPU 0/KVM-123     [000] d..1.    41.0: kvm_avic_unaccelerated_access: vcpu=0, offset=0xb0(APIC_EOI), fault, read, vec=0x0";
        assert_eq!(parse_line(l), None);
    }

    #[test]
    fn comm_with_spaces_and_no_flags() {
        let l = "kworker/0:1 x-42 [001] 5.000001: kvm_disconnect: (kvm_arch_irq_bypass_del_producer+0x0/0x90 [kvm]) cons=0x10 prod=0x20";
        let r = parse_line(l).unwrap();
        assert_eq!(r.pid, 42);
        assert_eq!(
            r.event,
            KEvent::Disconnect {
                cons: 0x10,
                prod: 0x20
            }
        );
    }

    /// Lines captured in a Debian 7.2.13 guest (intel-ir variant).
    #[test]
    fn captured_guest_lines() {
        let lines = [
            "           <...>-1       [000] .....     6.990871: prod_reg: (irq_bypass_register_producer+0x4/0xbe0 [irqbypass]) ptr=0xff2398d28107bcb0 eventfd=0xff2398d284d33340",
            "           <...>-1       [000] .....     6.996065: prod_reg_ret: (vfio_msi_set_vector_signal+0x1b2/0x2f0 [vfio_pci_core] <- irq_bypass_register_producer) ret=0",
            "   testbed-agent-1       [000] d.h1.     7.049480: kvm_msi_set_irq: dst 0 vec 64 (Fixed|physical|edge)",
            "     kworker/0:2-99      [000] .....     7.062157: cons_unreg: (irq_bypass_unregister_consumer+0x4/0x90 [irqbypass]) ptr=0xff2398d284d42b00",
            "   testbed-agent-1       [000] .....     7.064434: prod_unreg: (irq_bypass_unregister_producer+0x4/0x90 [irqbypass]) ptr=0xff2398d28107bcb0",
        ];
        let r: Vec<TraceRecord> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(
            r[0].event,
            KEvent::ProdReg {
                ptr: 0xff2398d28107bcb0,
                eventfd: Some(0xff2398d284d33340),
                vfio_name: None
            }
        );
        assert_eq!(r[0].pid, 1);
        assert_eq!(r[1].event, KEvent::ProdRegRet { ret: 0 });
        assert_eq!(r[2].event, KEvent::Msi { dst: 0, vec: 64 });
        assert!(r[2].hardirq && !r[0].hardirq);
        assert_eq!(r[3].pid, 99);
        assert_eq!(
            r[3].event,
            KEvent::ConsUnreg {
                ptr: 0xff2398d284d42b00
            }
        );
        assert_eq!(
            r[4].event,
            KEvent::ProdUnreg {
                ptr: 0xff2398d28107bcb0
            }
        );
    }

    #[test]
    fn junk_and_lost() {
        assert!(parse_line("# tracer: nop").is_none());
        assert!(parse_line("").is_none());
        assert!(parse_line("hello [0] world").is_none());
        assert_eq!(
            parse_line("CPU:0 [LOST 7 EVENTS]").unwrap().event,
            KEvent::Lost { count: 7 }
        );
    }
}
