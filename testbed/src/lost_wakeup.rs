//! Recognising QEMU's lost wakeup (docs/tcg-lost-wakeup.md) in a silent
//! guest, from what QEMU's monitor shows without touching the guest.
//!
//! Stock QEMU before 10.2 can lose a `CPU_INTERRUPT_POLL` request when
//! `helper_vmrun()` updates `interrupt_request` without the BQL while the
//! main loop's APIC timer sets the bit: the vCPU then holds a deliverable
//! interrupt in its local APIC's IRR and never looks at it. A CPU that does
//! not take a pending interrupt whose priority class is above its PPR while
//! EFLAGS.IF is set is impossible on real hardware (SDM vol. 3A 11.8.3,
//! "Interrupt, Task, and Processor Priority"; the same rule for AMD, APM
//! vol. 2 16.6.2): a halted CPU wakes on it, a running one takes it at the
//! next instruction boundary, in L2 as a #VMEXIT (KVM intercepts INTR and
//! enters L2 with host IF set). So seeing that state persist over
//! [`LOOK_APART`] says the emulator lost a wakeup, not that the guest hung.
//!
//! The looks are read-only HMP commands (`info registers -a`, `info lapic`):
//! unlike the NMI of a hung guest's dump, the guest sees nothing.

use std::time::Duration;

use qmp_client::Qmp;

/// What a table line adds for a second try after a stall.
pub const SECOND_TRY: &str = " (a second try: the first stalled on QEMU's lost wakeup)";

/// How far apart the first and the last look are.
pub const LOOK_APART: Duration = Duration::from_secs(2);
/// How many looks a diagnosis takes (evenly spread over [`LOOK_APART`]).
const LOOKS: u32 = 3;

/// One CPU as one look saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLook {
    pub cpu: u32,
    /// EFLAGS.IF (bit 9 of `RFL=` or `EFL=`).
    pub interrupts_enabled: bool,
    /// `HLT=1`.
    pub halted: bool,
    /// `RIP=` or `EIP=`.
    pub ip: u64,
    /// SPIV bit 8: the APIC is software-enabled.
    pub apic_enabled: bool,
    /// The highest vector in the IRR, if any.
    pub highest_irr: Option<u8>,
    pub ppr: u8,
}

impl CpuLook {
    /// A pending interrupt this CPU must take now: the APIC is enabled, IF is
    /// set and the highest requested vector's priority class is above the
    /// processor priority's (or the processor priority is 0).
    pub fn owes(&self) -> Option<u8> {
        let vector = self.highest_irr?;
        let above = self.ppr == 0 || (vector & 0xf0) > (self.ppr & 0xf0);
        (self.apic_enabled && self.interrupts_enabled && above).then_some(vector)
    }
}

/// A CPU that held one deliverable interrupt through every look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWakeup {
    pub cpu: u32,
    pub vector: u8,
    pub ppr: u8,
    /// Halted in every look (else running, possibly in L2).
    pub halted: bool,
    pub ip: u64,
}

impl std::fmt::Display for LostWakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.halted {
            "halted at"
        } else {
            "running, at"
        };
        write!(
            f,
            "CPU {} did not take pending interrupt {} in {} s (IF set, PPR {:#04x}, {how} {:#x}): \
             a lost wakeup in the emulator, docs/tcg-lost-wakeup.md",
            self.cpu,
            self.vector,
            LOOK_APART.as_secs(),
            self.ppr,
            self.ip
        )
    }
}

/// Parses `info registers -a`: per CPU (`CPU#n` headers), IF, HLT and the
/// instruction pointer. The APIC fields are left empty.
pub fn parse_registers(text: &str) -> Vec<CpuLook> {
    let mut cpus: Vec<CpuLook> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("CPU#") {
            if let Ok(cpu) = n.trim().parse() {
                cpus.push(CpuLook {
                    cpu,
                    interrupts_enabled: false,
                    halted: false,
                    ip: 0,
                    apic_enabled: false,
                    highest_irr: None,
                    ppr: 0,
                });
            }
            continue;
        }
        let Some(cpu) = cpus.last_mut() else { continue };
        for field in line.split_whitespace() {
            if let Some(v) = field
                .strip_prefix("RFL=")
                .or_else(|| field.strip_prefix("EFL="))
            {
                let flags = u64::from_str_radix(v, 16).unwrap_or(0);
                cpu.interrupts_enabled = flags & 0x200 != 0;
            } else if let Some(v) = field
                .strip_prefix("RIP=")
                .or_else(|| field.strip_prefix("EIP="))
            {
                cpu.ip = u64::from_str_radix(v, 16).unwrap_or(0);
            } else if let Some(v) = field.strip_prefix("HLT=") {
                cpu.halted = v == "1";
            }
        }
    }
    cpus
}

/// Parses one CPU's `info lapic` into `look`; false when the text is not
/// a local APIC's state (no `PPR` or no `IRR` line).
pub fn parse_lapic(text: &str, look: &mut CpuLook) -> bool {
    let (mut ppr, mut irr, mut spiv) = (None, None, None);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("IRR") => {
                irr = Some(
                    fields
                        .filter_map(|f| f.trim_end_matches("(level)").parse::<u8>().ok())
                        .max(),
                )
            }
            Some("SPIV") => {
                spiv = fields
                    .next()
                    .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            }
            Some("APR") => {
                let words: Vec<&str> = line.split_whitespace().collect();
                ppr = words
                    .windows(2)
                    .find(|w| w[0] == "PPR")
                    .and_then(|w| u8::from_str_radix(w[1].trim_start_matches("0x"), 16).ok());
            }
            _ => {}
        }
    }
    match (ppr, irr) {
        (Some(ppr), Some(irr)) => {
            look.ppr = ppr;
            look.highest_irr = irr;
            look.apic_enabled = spiv.is_some_and(|v| v & 0x100 != 0);
            true
        }
        _ => false,
    }
}

/// The CPU, if any, that owed the same interrupt in every look and never
/// took it (its instruction pointer may move: an L2 spinning in place and
/// an L1 interrupted between looks look alike, the vector settles it).
pub fn diagnose(looks: &[Vec<CpuLook>]) -> Option<LostWakeup> {
    let first = looks.first()?;
    first.iter().find_map(|cpu| {
        let vector = cpu.owes()?;
        let all = looks.iter().all(|look| {
            look.iter()
                .find(|c| c.cpu == cpu.cpu)
                .is_some_and(|c| c.owes() == Some(vector))
        });
        let last = looks.last()?.iter().find(|c| c.cpu == cpu.cpu)?;
        all.then(|| LostWakeup {
            cpu: cpu.cpu,
            vector,
            ppr: last.ppr,
            halted: looks
                .iter()
                .all(|l| l.iter().any(|c| c.cpu == cpu.cpu && c.halted)),
            ip: last.ip,
        })
    })
}

/// Looks at a silent guest [`LOOKS`] times over [`LOOK_APART`]; returns the
/// lost wakeup and the monitor's text of every look, or nothing when no CPU
/// is stuck that way or the monitor does not answer within `patience`.
pub async fn probe(qmp: &Qmp, patience: Duration) -> Option<(LostWakeup, String)> {
    let hmp = |command: &str, cpu: Option<i64>| {
        let cmd = qapi::qmp::human_monitor_command {
            cpu_index: cpu,
            command_line: command.to_owned(),
        };
        tokio::time::timeout(patience, qmp.execute(cmd))
    };
    let mut looks = Vec::new();
    let mut text = String::new();
    for n in 0..LOOKS {
        if n > 0 {
            tokio::time::sleep(LOOK_APART / (LOOKS - 1)).await;
        }
        let Ok(Ok(registers)) = hmp("info registers -a", None).await else {
            return None;
        };
        let mut cpus = parse_registers(&registers);
        text.push_str(&format!("== info registers -a (look {n})\n{registers}\n"));
        for cpu in &mut cpus {
            let Ok(Ok(lapic)) = hmp("info lapic", Some(i64::from(cpu.cpu))).await else {
                return None;
            };
            text.push_str(&format!(
                "== info lapic (cpu {}, look {n})\n{lapic}\n",
                cpu.cpu
            ));
            if !parse_lapic(&lapic, cpu) {
                return None;
            }
        }
        // nothing owed now: no need for the other looks
        if !cpus.iter().any(|c| c.owes().is_some()) {
            return None;
        }
        looks.push(cpus);
    }
    diagnose(&looks).map(|d| (d, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frozen one-CPU L1 as the hung-guest dump caught it (stock amd-ir,
    /// Debian 6.16, the boot that saves an L1 state; 2026-12-06): halted,
    /// IF set, 236 (its timer) in IRR, PPR 0x10.
    const FROZEN: &str = include_str!("../tests/fixtures/cpu-state/lost-wakeup-halted.txt");

    fn section<'a>(text: &'a str, title: &str) -> &'a str {
        let start = text.find(title).expect(title) + title.len();
        let rest = &text[start..];
        &rest[..rest.find("\n== ").unwrap_or(rest.len())]
    }

    fn frozen_look(round: usize) -> Vec<CpuLook> {
        let mut cpus = parse_registers(section(FROZEN, &format!("== info registers -a ({round})")));
        assert!(parse_lapic(
            section(FROZEN, "== info lapic (cpu 0)"),
            &mut cpus[0]
        ));
        cpus
    }

    #[test]
    fn the_frozen_l1_owes_its_timer_interrupt() {
        let look = frozen_look(0);
        assert_eq!(
            look,
            vec![CpuLook {
                cpu: 0,
                interrupts_enabled: true,
                halted: true,
                ip: 0xffffffff8203567f,
                apic_enabled: true,
                highest_irr: Some(236),
                ppr: 0x10,
            }]
        );
        let d = diagnose(&[look, frozen_look(1)]).expect("a lost wakeup");
        assert_eq!((d.cpu, d.vector, d.ppr, d.halted), (0, 236, 0x10, true));
        assert!(d.to_string().starts_with(
            "CPU 0 did not take pending interrupt 236 in 2 s (IF set, PPR 0x10, halted at 0xffffffff8203567f)"
        ));
    }

    #[test]
    fn what_a_cpu_may_keep_pending_is_no_lost_wakeup() {
        let base = frozen_look(0)[0];
        let cases = [
            (
                "interrupts off",
                CpuLook {
                    interrupts_enabled: false,
                    ..base
                },
            ),
            (
                "vector at the processor priority",
                CpuLook { ppr: 0xe0, ..base },
            ),
            ("vector below it", CpuLook { ppr: 0xf0, ..base }),
            (
                "APIC software-disabled",
                CpuLook {
                    apic_enabled: false,
                    ..base
                },
            ),
            (
                "nothing requested",
                CpuLook {
                    highest_irr: None,
                    ..base
                },
            ),
        ];
        for (what, cpu) in cases {
            assert_eq!(cpu.owes(), None, "{what}");
            assert_eq!(diagnose(&[vec![cpu], vec![cpu]]), None, "{what}");
        }
        // a priority of 0 masks nothing, one in a lower class neither
        assert_eq!(CpuLook { ppr: 0, ..base }.owes(), Some(236));
        assert_eq!(CpuLook { ppr: 0xd0, ..base }.owes(), Some(236));
    }

    #[test]
    fn an_interrupt_taken_between_looks_is_no_lost_wakeup() {
        let stuck = frozen_look(0);
        let mut took = stuck.clone();
        took[0].highest_irr = None;
        assert_eq!(diagnose(&[stuck.clone(), took]), None);
        let mut other = stuck.clone();
        other[0].highest_irr = Some(239);
        assert_eq!(diagnose(&[stuck.clone(), other]), None);
        // a CPU gone from a later look (the monitor said less) proves nothing
        assert_eq!(diagnose(&[stuck, Vec::new()]), None);
    }

    #[test]
    fn a_spinning_l2_in_real_mode_is_read_from_eip_and_efl() {
        let regs = "CPU#0\nEAX=00000000 EBX=00000002 ECX=00000000 EDX=00000000\n\
                    EIP=000021c0 EFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n\
                    ES =0000 00000000 0000ffff 00009300\n\
                    CPU#1\nRIP=ffffffff8203567f RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n";
        let cpus = parse_registers(regs);
        assert_eq!(cpus.len(), 2);
        assert!(cpus[0].interrupts_enabled && !cpus[0].halted && cpus[0].ip == 0x21c0);
        assert!(!cpus[1].interrupts_enabled && cpus[1].halted && cpus[1].cpu == 1);
        let mut spinning = cpus[0];
        assert!(parse_lapic(
            "SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255\n\
             ISR\t (none)\nIRR\t 34(level) 236 \n\n\
             APR 0x00 TPR 0x10 DFR 0x0f LDR 0x01 PPR 0x10\n",
            &mut spinning
        ));
        assert_eq!(spinning.highest_irr, Some(236));
        let d = diagnose(&[vec![spinning], vec![spinning], vec![spinning]]).unwrap();
        assert!(!d.halted);
        assert!(d.to_string().contains("running, at 0x21c0"), "{d}");
    }

    /// A two-CPU L1 that hung with nothing pending (amd-avic, Debian 6.17,
    /// the matrix on fresh boots, 2026-12-06): a hang, not a lost wakeup.
    #[test]
    fn a_hang_with_nothing_pending_is_no_lost_wakeup() {
        const HUNG: &str = include_str!("../tests/fixtures/cpu-state/hung-nothing-pending.txt");
        let looks: Vec<Vec<CpuLook>> = (0..2)
            .map(|round| {
                let mut cpus =
                    parse_registers(section(HUNG, &format!("== info registers -a ({round})")));
                assert_eq!(cpus.len(), 2);
                for cpu in &mut cpus {
                    let title = format!("== info lapic (cpu {})", cpu.cpu);
                    assert!(parse_lapic(section(HUNG, &title), cpu));
                }
                cpus
            })
            .collect();
        assert!(looks[0]
            .iter()
            .all(|c| c.halted && c.apic_enabled && c.highest_irr.is_none()));
        assert_eq!(diagnose(&looks), None);
    }

    #[test]
    fn a_monitor_answer_that_is_no_apic_is_refused() {
        let mut cpu = frozen_look(0)[0];
        assert!(!parse_lapic("local apic state not available\n", &mut cpu));
        assert!(parse_registers("Error: something\n").is_empty());
    }
}
