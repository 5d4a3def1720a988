//! The summary a person reads in five seconds after `testbed run`: per
//! variant, whether the platform can post device interrupts, how many
//! irqbypass connections formed, and where the devices' interrupts went
//! (posted by the IOMMU into a vCPU, or through L1's host IRQ line).

use std::fmt::Write as _;

use crate::run::{Cell, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSummary {
    pub variant: &'static str,
    pub scenarios: usize,
    pub passed: usize,
    /// KVM has APICv and device-posted IRQs on and the IOMMU posts: the
    /// first report's platform says; `None` when no scenario reported.
    pub can_post: Option<bool>,
    /// irqbypass connections that formed (connect callback returned 0).
    pub connections: u64,
    /// Interrupts the IOMMU posted into a vCPU's virtual APIC.
    pub posted: u64,
    /// Device interrupts L1's host IRQ line took (remapped, not posted).
    pub through_l1: u64,
    /// How KVM runs AVIC in L1 (`wire::Platform::avic_mode`), from the
    /// first report that says; `None` off AMD or when no scenario reported.
    pub avic: Option<&'static str>,
}

pub fn summarize(cells: &[Cell]) -> Vec<VariantSummary> {
    let mut out: Vec<VariantSummary> = Vec::new();
    for cell in cells {
        let i = match out.iter().position(|s| s.variant == cell.variant) {
            Some(i) => i,
            None => {
                out.push(VariantSummary {
                    variant: cell.variant,
                    scenarios: 0,
                    passed: 0,
                    can_post: None,
                    connections: 0,
                    posted: 0,
                    through_l1: 0,
                    avic: None,
                });
                out.len() - 1
            }
        };
        let s = &mut out[i];
        s.scenarios += 1;
        if matches!(cell.verdict, Verdict::Pass | Verdict::Accepted) {
            s.passed += 1;
        }
        let Some(report) = &cell.report else { continue };
        let p = &report.platform;
        let posts = p.irq_posting && p.apicv == Some(true) && p.device_posted_irqs != Some(false);
        s.avic = s.avic.or(p.avic_mode());
        s.can_post = Some(s.can_post.unwrap_or(false) || posts);
        for step in &report.steps {
            s.connections += step
                .bypass
                .iter()
                .filter(|e| matches!(e, wire::BypassEvent::Connected { ret: 0, .. }))
                .count() as u64;
            s.through_l1 += step.interrupts.iter().map(|v| v.host_irq).sum::<u64>();
        }
        if let Some(Ok(counts)) = &report.iommu {
            s.posted += counts.posted;
        }
    }
    out
}

pub fn render(rows: &[VariantSummary]) -> String {
    let mut out = format!(
        "{:<16} {:>9}  {:<8} {:>11} {:>16} {:>11}  {}\n",
        "VARIANT", "SCENARIOS", "POSTS", "CONNECTIONS", "POSTED BY IOMMU", "THROUGH L1", "KVM AVIC"
    );
    for r in rows {
        let posts = match r.can_post {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let _ = writeln!(
            out,
            "{:<16} {:>9}  {:<8} {:>11} {:>16} {:>11}  {}",
            r.variant,
            format!("{}/{}", r.passed, r.scenarios),
            posts,
            r.connections,
            r.posted,
            r.through_l1,
            r.avic.unwrap_or("-")
        );
    }
    let posted: u64 = rows.iter().map(|r| r.posted).sum();
    let posters: Vec<&str> = rows
        .iter()
        .filter(|r| r.posted > 0)
        .map(|r| r.variant)
        .collect();
    if posted > 0 {
        let _ = writeln!(
            out,
            "{posted} device interrupts were posted by the emulated IOMMU straight into an L2 vCPU ({}), without L1 taking them",
            posters.join(", ")
        );
    } else if rows.iter().all(|r| r.can_post == Some(false)) {
        out.push_str(
            "no variant here can post device interrupts: add --variant amd-avic to see posting\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Header, Report};
    use crate::runner::IommuCounts;

    const SCENARIO: &str = r#"
description = "edu"
[[device]]
name = "dev0"
model = "edu"
[[step]]
action = "bind"
device = "dev0"
[[step]]
action = "enable-msi"
device = "dev0"
[[step]]
action = "create-vm"
vm = "vm0"
[[step]]
action = "irqfd"
vm = "vm0"
vector = "dev0/msi0"
[[step]]
action = "fire"
vector = "dev0/msi0"
count = 5
"#;

    fn cell(
        variant: &'static str,
        verdict: Verdict,
        posting: bool,
        connected: bool,
        posted: u64,
        l1: u64,
    ) -> Cell {
        let scenario =
            crate::scenario::parse(std::path::Path::new("scenarios/edu.toml"), SCENARIO).unwrap();
        let platform = wire::Platform {
            kvm_vendor: Some("kvm_amd".into()),
            apicv: Some(posting),
            device_posted_irqs: Some(posting),
            irq_posting: posting,
            ipiv: Some(true),
            x2avic: posting.then_some(variant == "amd-x2avic"),
            posted_msi: None,
            ..Default::default()
        };
        let step = |index: usize,
                    bypass: Vec<wire::BypassEvent>,
                    interrupts: Vec<wire::VectorCount>| wire::StepReport {
            index,
            error: None,
            bypass,
            interrupts,
            kernel_warnings: vec![],
            l2: None,
        };
        let connect = if connected {
            vec![wire::BypassEvent::Connected {
                producer: "dev0/msi0".into(),
                consumer: "vm0:dev0/msi0".into(),
                ret: 0,
            }]
        } else {
            vec![]
        };
        let fire = wire::VectorCount {
            vector: "dev0/msi0".into(),
            raised: 5,
            signalled: None,
            host_irq: l1,
            host_chip: None,
            injected: l1,
            delivered: None,
            resampled: None,
            eoi_trapped: None,
            route: None,
            unmasked: None,
        };
        let steps = vec![
            step(0, vec![], vec![]),
            step(1, vec![], vec![]),
            step(2, vec![], vec![]),
            step(3, connect, vec![]),
            step(4, vec![], vec![fire]),
        ];
        let header = Header {
            variant: variant.into(),
            kernel_release: "7.2".into(),
            qemu_version: "10".into(),
        };
        let report = Report::from_parts(&scenario, header, platform, steps, None, None).with_iommu(
            posting.then_some(Ok(IommuCounts {
                posted,
                ..Default::default()
            })),
        );
        Cell {
            scenario: "edu".into(),
            variant,
            verdict,
            detail: vec![],
            report: Some(report),
            diff: None,
        }
    }

    #[test]
    fn counts_per_variant_and_names_posting() {
        let cells = [
            cell("amd-ir", Verdict::Pass, false, false, 0, 5),
            cell("amd-ir", Verdict::Mismatch, false, false, 0, 5),
            cell("amd-avic", Verdict::Pass, true, true, 5, 0),
        ];
        let rows = summarize(&cells);
        assert_eq!(
            rows[0],
            VariantSummary {
                variant: "amd-ir",
                scenarios: 2,
                passed: 1,
                can_post: Some(false),
                connections: 0,
                posted: 0,
                through_l1: 10,
                avic: Some("no AVIC"),
            }
        );
        assert_eq!(
            rows[1],
            VariantSummary {
                variant: "amd-avic",
                scenarios: 1,
                passed: 1,
                can_post: Some(true),
                connections: 1,
                posted: 5,
                through_l1: 0,
                avic: Some("hybrid AVIC + IPI virtualization"),
            }
        );
        let text = render(&rows);
        let row = "amd-avic               1/1  yes                1                5           0  ";
        assert!(
            text.contains(&format!("{row}hybrid AVIC + IPI virtualization")),
            "{text}"
        );
        assert!(text.contains("5 device interrupts were posted by the emulated IOMMU straight into an L2 vCPU (amd-avic)"), "{text}");
        let x2 = summarize(&[cell("amd-x2avic", Verdict::Pass, true, true, 5, 0)]);
        assert_eq!(x2[0].avic, Some("x2AVIC + IPI virtualization"));
        let stock = render(&summarize(&cells[..2]));
        assert!(
            stock.contains("no variant here can post device interrupts"),
            "{stock}"
        );
    }
}
