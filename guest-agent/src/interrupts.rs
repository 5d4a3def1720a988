//! `/proc/interrupts`: the L1 host IRQ line of a VFIO vector.

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

    #[test]
    fn chip_names() {
        assert_eq!(normalize_chip("IR-PCI-MSIX-0000:01:00.0"), "IR-PCI-MSIX");
        assert_eq!(normalize_chip("IR-IO-APIC"), "IR-IO-APIC");
        assert_eq!(normalize_chip("PCI-MSI"), "PCI-MSI");
        assert_eq!(normalize_chip("AMD-Vi-MSI"), "AMD-Vi-MSI");
    }
}
