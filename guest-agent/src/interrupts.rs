//! `/proc/interrupts`: the L1 host IRQ line of a VFIO vector, and L1's MSIs.

use std::collections::BTreeMap;

/// The line of one vector: count summed over CPUs and the chip column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqLine {
    pub count: u64,
    pub chip: String,
}

/// The action name VFIO gives a vector: `vfio-msi[0](0000:00:03.0)`.
pub fn vfio_irq_name(kind: &str, index: u32, bdf: &str) -> String {
    format!("vfio-{kind}[{index}]({bdf})")
}

/// Find the line whose action name is exactly `name` (an IRQ line may carry
/// several comma-separated actions).
pub fn find_line(text: &str, name: &str) -> Option<IrqLine> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()?
        .split_whitespace()
        .filter(|t| t.starts_with("CPU"))
        .count();
    for line in lines {
        let mut toks = line.split_whitespace();
        let Some(label) = toks.next() else { continue };
        if !label.ends_with(':') || label[..label.len() - 1].parse::<u32>().is_err() {
            continue;
        }
        let rest: Vec<&str> = toks.collect();
        if rest.len() < ncpu + 1 {
            continue;
        }
        let counts = &rest[..ncpu];
        let tail = &rest[ncpu..];
        let matches = tail
            .iter()
            .skip(1)
            .any(|t| t.trim_end_matches(',').split(',').any(|a| a == name));
        if !matches {
            continue;
        }
        let count = counts.iter().filter_map(|c| c.parse::<u64>().ok()).sum();
        return Some(IrqLine {
            count,
            chip: tail[0].to_string(),
        });
    }
    None
}

/// The PCI MSI and MSI-X lines of a /proc/interrupts text (chip
/// `PCI-MSI*` or `IR-PCI-MSI*`), each keyed by its IRQ number and the rest
/// of its line after the counts, with its count summed over CPUs; and the
/// `PMN` count (posted-MSI notifications), where the kernel has one.
pub fn msi_lines(text: &str) -> (BTreeMap<String, u64>, Option<u64>) {
    let mut lines = text.lines();
    let ncpu = lines.next().map_or(0, |header| {
        header
            .split_whitespace()
            .filter(|t| t.starts_with("CPU"))
            .count()
    });
    let mut msi = BTreeMap::new();
    let mut pmn = None;
    for line in lines {
        let mut toks = line.split_whitespace();
        let Some(label) = toks.next().and_then(|l| l.strip_suffix(':')) else {
            continue;
        };
        let rest: Vec<&str> = toks.collect();
        let sum: u64 = rest
            .iter()
            .take(ncpu)
            .filter_map(|c| c.parse::<u64>().ok())
            .sum();
        if label == "PMN" {
            pmn = Some(sum);
        } else if label.parse::<u32>().is_ok()
            && rest.get(ncpu).is_some_and(|chip| {
                let chip = chip.strip_prefix("IR-").unwrap_or(chip);
                chip.starts_with("PCI-MSI")
            })
        {
            let key = format!("{label} {}", rest[ncpu..].join(" "));
            msi.insert(key, sum);
        }
    }
    (msi, pmn)
}

/// L1's MSIs over a scenario, from /proc/interrupts read at every step
/// boundary. Devices come and go within a scenario (VFIO frees a vector's
/// line when MSI is disabled, and every line is gone after cleanup), so
/// one difference of two totals would lose what a vanished line counted:
/// each line counts from where it was first seen (0 when it appeared
/// during a step) to where it was last seen. Only what a line counts in
/// the step that frees it is lost (no step both fires and frees).
#[derive(Debug, Default)]
pub struct MsiTally {
    last: BTreeMap<String, u64>,
    counted: u64,
    pmn_first: Option<u64>,
    pmn_last: Option<u64>,
}

impl MsiTally {
    /// Start at the current counts of `text`.
    pub fn start(text: &str) -> MsiTally {
        let (last, pmn) = msi_lines(text);
        MsiTally {
            last,
            counted: 0,
            pmn_first: pmn,
            pmn_last: pmn,
        }
    }

    /// Add what happened since the last sample.
    pub fn sample(&mut self, text: &str) {
        let (now, pmn) = msi_lines(text);
        for (key, count) in &now {
            let before = self.last.get(key).copied().unwrap_or(0);
            self.counted += count.saturating_sub(before);
        }
        self.last = now;
        self.pmn_last = pmn;
    }

    pub fn total(&self) -> wire::L1Msi {
        wire::L1Msi {
            pci_msi: self.counted,
            posted_msi_notifications: match (self.pmn_first, self.pmn_last) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        }
    }
}

/// `IR-PCI-MSI-0000:00:03.0` -> `IR-PCI-MSI`: drop a trailing `-<pci address>`.
pub fn normalize_chip(chip: &str) -> String {
    for (i, c) in chip.char_indices().rev() {
        if c == '-' && is_pci_addr(&chip[i + 1..]) {
            return chip[..i].to_string();
        }
    }
    chip.to_string()
}

/// `0000:00:03.0` or `00:03.0`.
fn is_pci_addr(s: &str) -> bool {
    let Some((head, func)) = s.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = head.split(':').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
    let ok_head = match parts.as_slice() {
        [d, b, s] => hex(d, 4) && hex(b, 2) && hex(s, 2),
        [b, s] => hex(b, 2) && hex(s, 2),
        _ => false,
    };
    ok_head && func.len() == 1 && func.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str = "           CPU0       
  0:         44  IR-IO-APIC    2-edge      timer
  4:          0  IR-IO-APIC    4-edge      ttyS0
 24:          0  AMD-Vi-MSI    0-edge      AMD-Vi
 25:          5  IR-PCI-MSI-0000:00:02.0    0-edge      vfio-msi[0](0000:00:02.0)
NMI:          0   Non-maskable interrupts
LOC:       1234   Local timer interrupts
ERR:          0
MIS:          0
";

    const TWO_CPU: &str = "           CPU0       CPU1       
 26:          3          4  PCI-MSI-0000:00:03.0    0-edge      vfio-msi[0](0000:00:03.0)
 27:          1          0  PCI-MSI-0000:00:03.0    1-edge      vfio-msi[1](0000:00:03.0)
";

    #[test]
    fn finds_vfio_line() {
        let l = find_line(AMD, &vfio_irq_name("msi", 0, "0000:00:02.0")).unwrap();
        assert_eq!(
            l,
            IrqLine {
                count: 5,
                chip: "IR-PCI-MSI-0000:00:02.0".into()
            }
        );
        assert_eq!(normalize_chip(&l.chip), "IR-PCI-MSI");
        assert!(find_line(AMD, &vfio_irq_name("msi", 1, "0000:00:02.0")).is_none());
    }

    #[test]
    fn sums_cpus() {
        let l = find_line(TWO_CPU, "vfio-msi[0](0000:00:03.0)").unwrap();
        assert_eq!(l.count, 7);
        assert_eq!(normalize_chip(&l.chip), "PCI-MSI");
        assert_eq!(
            find_line(TWO_CPU, "vfio-msi[1](0000:00:03.0)")
                .unwrap()
                .count,
            1
        );
    }

    const POSTED: &str = "           CPU0       CPU1       
  0:         44          0  IR-IO-APIC    2-edge      timer
 24:          0          0  DMAR-MSI    0-edge      dmar0
 25:          5          1  IR-PCI-MSI-0000:00:02.0    0-edge      vfio-msi[0](0000:00:02.0)
 26:          2          0  IR-PCI-MSIX-0000:00:03.0    0-edge      vfio-msix[0](0000:00:03.0)
 27:          7          0  PCI-MSI-0000:00:04.0    0-edge      virtio0-config
NMI:          0          0   Non-maskable interrupts
PIN:          0          0   Posted-interrupt notification event
PMN:          3          4   Posted MSI notification event
";

    #[test]
    fn msi_lines_and_pmn() {
        // every PCI MSI/MSI-X line, not the IOMMU's own (DMAR-MSI) nor the IO-APIC
        let (lines, pmn) = msi_lines(POSTED);
        assert_eq!(
            lines.into_iter().collect::<Vec<_>>(),
            [
                (
                    "25 IR-PCI-MSI-0000:00:02.0 0-edge vfio-msi[0](0000:00:02.0)".to_string(),
                    6
                ),
                (
                    "26 IR-PCI-MSIX-0000:00:03.0 0-edge vfio-msix[0](0000:00:03.0)".to_string(),
                    2
                ),
                (
                    "27 PCI-MSI-0000:00:04.0 0-edge virtio0-config".to_string(),
                    7
                ),
            ]
        );
        assert_eq!(pmn, Some(7));
        // a kernel without CONFIG_X86_POSTED_MSI has no PMN line
        assert_eq!(msi_lines(AMD).1, None);
    }

    #[test]
    fn tally_keeps_what_vanished_lines_counted() {
        let mut t = MsiTally::start(POSTED);
        // line 25 fires 4 more, then line 26 goes away and 28 appears with 3
        t.sample(&POSTED.replace(" 25:          5 ", " 25:          9 "));
        let gone = POSTED
            .replace(" 25:          5 ", " 25:          9 ")
            .lines()
            .filter(|l| !l.starts_with(" 26:"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n 28:          3          0  IR-PCI-MSIX-0000:00:05.0    0-edge      vfio-msix[0](0000:00:05.0)\n";
        t.sample(&gone.replace("PMN:          3", "PMN:          9"));
        // everything gone: nothing more
        t.sample("           CPU0       CPU1       \nPMN:          9          4   Posted MSI notification event\n");
        assert_eq!(
            t.total(),
            wire::L1Msi {
                pci_msi: 7,
                posted_msi_notifications: Some(6)
            }
        );
        // a reused IRQ number with another action is another line
        let mut t = MsiTally::start(POSTED);
        t.sample(&POSTED.replace("vfio-msi[0](0000:00:02.0)", "vfio-msi[1](0000:00:02.0)"));
        assert_eq!(t.total().pci_msi, 6);
        assert_eq!(MsiTally::start(AMD).total().posted_msi_notifications, None);
    }

    #[test]
    fn chip_names() {
        assert_eq!(normalize_chip("IR-PCI-MSIX-0000:01:00.0"), "IR-PCI-MSIX");
        assert_eq!(normalize_chip("IR-IO-APIC"), "IR-IO-APIC");
        assert_eq!(normalize_chip("PCI-MSI"), "PCI-MSI");
        assert_eq!(normalize_chip("AMD-Vi-MSI"), "AMD-Vi-MSI");
    }
}
