//! The L2 side of an `l2-link` step: after the host changed a NIC's link,
//! wait until L2's driver took the change's interrupt and the interface
//! shows it.

use std::path::Path;
use std::time::{Duration, Instant};

use wire::{L2Irq, L2Message};

use crate::l2linux::{ifname_of, read_irqs};
use crate::say;

/// Longest a link change may take to reach L2's driver.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// The count of the NIC's link vector: the MSI-X line of `bdf` whose
/// action is the interface's own name (igb and e1000e name their "other"
/// vector, which takes the link-status-change cause, after the netdev).
pub fn link_count(irqs: &[L2Irq], bdf: &str, ifname: &str) -> Option<u64> {
    irqs.iter()
        .find(|i| i.bdf == bdf && i.name == ifname)
        .map(|i| i.count)
}

/// Wait until `bdf`'s interface has carrier `up` and its link vector has
/// counted at least `link_irqs`.
pub fn await_link(bdf: &str, up: bool, link_irqs: u64) -> Result<L2Message, String> {
    let ifname = ifname_of(bdf)?;
    let carrier_path = Path::new("/sys/class/net").join(&ifname).join("carrier");
    let t0 = Instant::now();
    loop {
        // an interface that is down reads EINVAL: no carrier
        let carrier = std::fs::read_to_string(&carrier_path)
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        let irqs = read_irqs();
        let count = link_count(&irqs, bdf, &ifname)
            .ok_or_else(|| format!("{ifname}: no MSI-X line named {ifname} (its link vector)"))?;
        if carrier == up && count >= link_irqs {
            say!(
                "L2: {ifname} carrier {}, link vector at {count} after {} ms",
                if up { "up" } else { "down" },
                t0.elapsed().as_millis()
            );
            return Ok(L2Message::Link {
                carrier,
                link_irqs: count,
            });
        }
        if t0.elapsed() > LINK_TIMEOUT {
            return Err(format!(
                "{ifname}: after {LINK_TIMEOUT:?} carrier {} (waited for {}), link vector at {count} (waited for {link_irqs})",
                if carrier { "up" } else { "down" },
                if up { "up" } else { "down" },
            ));
        }
        // not faster: the L2 has one vCPU, which its driver's watchdog needs too
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_vector_is_the_line_named_after_the_interface() {
        let text = "           CPU0\n 24:          3  PCI-MSIX-0000:00:10.0    0-edge      eth0\n 25:         12  PCI-MSIX-0000:00:10.0    1-edge      eth0-TxRx-0\n 26:          5  PCI-MSIX-0000:00:11.0    0-edge      eth1\n";
        let irqs = crate::l2linux::parse_irqs(text);
        assert_eq!(link_count(&irqs, "0000:00:10.0", "eth0"), Some(3));
        assert_eq!(link_count(&irqs, "0000:00:11.0", "eth1"), Some(5));
        assert_eq!(link_count(&irqs, "0000:00:10.0", "eth1"), None);
    }
}
