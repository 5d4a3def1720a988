//! `lossless` for level-triggered (INTx) interrupts.
//!
//! A level interrupt travels a loop, not a line: the device asserts its
//! pin, VFIO's INTx handler in L1 masks the line and signals the trigger
//! eventfd, KVM's resample irqfd asserts the VM's IOAPIC pin, the L2 takes
//! the interrupt, acknowledges the device (which de-asserts its pin) and
//! EOIs; the EOI reaches KVM's resampler, which de-asserts the GSI and
//! signals the resample eventfd, and VFIO's unmask-by-eventfd unmasks the
//! line in L1, re-arming it for the next assertion.
//!
//! Lossless for a `fire` of `count` on an INTx vector held by an irqfd
//! whose VM's L2 runs means every lap of that loop closed, once per raise:
//! L1's INTx handler ran `count` times (fewer: lost, more: a spurious
//! assertion), KVM asserted the GSI `count` times, the L2 took it `count`
//! times, `count` EOIs reached the resampler, and the line was re-armed
//! after every one of them (at least one VFIO unmask per EOI; a resampler
//! shared by several irqfds unmasks each of their devices). Where no L2
//! runs, nobody EOIs: the line is taken and asserted exactly once, however
//! often the device raises it, and nothing is resampled.

use super::Report;

pub(super) fn lossless(
    r: &Report,
    i: usize,
    vector: &str,
    count: u32,
    running: bool,
    problems: &mut Vec<String>,
    ok: &mut Vec<String>,
) {
    let n = i + 1;
    let Some(rep) = r.step_report(i) else {
        problems.push(format!("step {n} (fire {vector}) did not run"));
        return;
    };
    if let Some(e) = &rep.error {
        problems.push(format!("step {n} (fire {vector}) failed: {e}"));
    }
    let Some(c) = rep.interrupts.iter().find(|c| c.vector == vector) else {
        problems.push(format!("step {n}: no interrupt counts for {vector}"));
        return;
    };
    let before = problems.len();
    let raised = c.raised;
    if raised != u64::from(count) {
        problems.push(format!("step {n} {vector}: raised {raised} of {count}"));
    }
    let resampled = c.resampled.unwrap_or(0);
    let unmasked = c.unmasked.unwrap_or(0);
    if running {
        let rearm = format!(
            "{resampled} EOIs reached KVM's resampler, VFIO unmasked the line {unmasked} times"
        );
        if c.host_irq < raised {
            problems.push(format!(
                "step {n} {vector}: raised {raised} but L1's INTx handler ran {}: {} lost, the line was not re-armed ({rearm})",
                c.host_irq,
                raised - c.host_irq
            ));
        } else if c.host_irq > raised {
            problems.push(format!(
                "step {n} {vector}: raised {raised} but L1's INTx handler ran {}: {} spurious assertions ({rearm})",
                c.host_irq,
                c.host_irq - raised
            ));
        }
        if c.injected != c.host_irq {
            problems.push(format!(
                "step {n} {vector}: L1 took the line {} times but KVM asserted the GSI {}",
                c.host_irq, c.injected
            ));
        }
        match c.delivered {
            Some(d) if d != raised => problems.push(format!(
                "step {n} {vector}: raised {raised} but the L2 took and EOIed it {d} times"
            )),
            None => problems.push(format!(
                "step {n} {vector}: the L2 ran but reported no deliveries"
            )),
            _ => {}
        }
        if resampled != c.delivered.unwrap_or(0) {
            problems.push(format!(
                "step {n} {vector}: the L2 EOIed {} but {resampled} EOIs reached KVM's resampler",
                c.delivered.unwrap_or(0)
            ));
        }
        if unmasked < resampled {
            problems.push(format!(
                "step {n} {vector}: the line was not re-armed after every EOI: {resampled} EOIs, {unmasked} VFIO unmasks (is the resample eventfd wired to VFIO's unmask? intx-unmask)"
            ));
        }
    } else {
        let once = raised.min(1);
        if c.host_irq != once || c.injected != once {
            problems.push(format!(
                "step {n} {vector}: no L2 EOIs it, so the level line must be taken and asserted once for {raised} raised; L1 took it {}, KVM asserted it {}",
                c.host_irq, c.injected
            ));
        }
        if resampled != 0 {
            problems.push(format!(
                "step {n} {vector}: no L2 ran, yet {resampled} EOIs reached the resampler"
            ));
        }
    }
    if problems.len() == before {
        ok.push(format!("step {n} {vector} {raised}/{raised}"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wire::{Done, Platform, StepReport, VectorCount};

    use crate::report::{Header, IommuCounts, Report};
    use crate::scenario;

    const SCENARIO: &str = include_str!("../../../scenarios/edu-intx-resample.toml");

    fn counts(
        host: u64,
        injected: u64,
        delivered: u64,
        resampled: u64,
        unmasked: u64,
    ) -> VectorCount {
        VectorCount {
            vector: "dev0/intx0".into(),
            raised: 20,
            signalled: None,
            host_irq: host,
            host_chip: Some("IR-IO-APIC".into()),
            injected,
            delivered: Some(delivered),
            resampled: Some(resampled),
            eoi_trapped: None,
            route: None,
            unmasked: Some(unmasked),
        }
    }

    fn report(c: VectorCount) -> Report {
        let s = scenario::parse(Path::new("scenarios/edu-intx-resample.toml"), SCENARIO).unwrap();
        let steps = (0..s.steps.len())
            .map(|index| StepReport {
                index,
                error: None,
                bypass: vec![],
                interrupts: if index == 6 { vec![c.clone()] } else { vec![] },
                kernel_warnings: vec![],
                l2: None,
            })
            .collect();
        let header = Header {
            variant: "intel-ir".into(),
            kernel_release: "7.2.13+deb14-amd64".into(),
            qemu_version: "10.0.2".into(),
        };
        let done = Done {
            cleanup: vec![],
            cleanup_error: None,
            kernel_warnings: vec![],
            l1_msi: None,
        };
        Report::from_parts(&s, header, Platform::default(), steps, Some(done), None)
    }

    fn lossless(r: &Report) -> (bool, String) {
        let c = r
            .checks()
            .into_iter()
            .find(|c| c.expectation == "lossless")
            .expect("lossless");
        (c.passed, c.detail)
    }

    #[test]
    fn every_lap_closed_passes() {
        let (ok, detail) = lossless(&report(counts(20, 20, 20, 20, 20)));
        assert!(ok, "{detail}");
    }

    /// On a platform whose IOMMU posts (amd-avic), a level interrupt still
    /// passes through L1 (nothing posts INTx), and the summary says so.
    #[test]
    fn on_a_posting_platform_intx_counts_as_through_l1() {
        let r = report(counts(20, 20, 20, 20, 20)).with_iommu(Some(Ok(IommuCounts {
            remapped: 1184,
            ..Default::default()
        })));
        let (ok, detail) = lossless(&r);
        assert!(ok, "{detail}");
        assert_eq!(detail, "0 posted by the IOMMU, 20 through L1");
        // an INTx raise L1 never took is not posted either
        let r = report(counts(19, 19, 19, 19, 19)).with_iommu(Some(Ok(IommuCounts::default())));
        let (ok, detail) = lossless(&r);
        assert!(!ok, "{detail}");
    }

    /// AVIC's EOI traps (an xAPIC L2) show on the vector's line; none (an
    /// x2APIC L2, or no AVIC) show nothing, so those bodies are unchanged.
    #[test]
    fn avic_eoi_traps_show_only_when_there_are_some() {
        let line = "step 7  dev0/intx0  raised 20  L1 20 (IR-IO-APIC)  injected by KVM 20  delivered in L2 20  resampled 20  unmasked 20";
        let mut c = counts(20, 20, 20, 20, 20);
        c.eoi_trapped = Some(20);
        let body = report(c.clone()).body();
        assert!(
            body.contains(&format!("{line}  EOIs trapped by AVIC 20\n")),
            "{body}"
        );
        c.eoi_trapped = Some(0);
        let body = report(c).body();
        assert!(body.contains(&format!("{line}\n")), "{body}");
    }

    #[test]
    fn unmask_not_wired_fails_with_the_reason() {
        // measured on intel-ir with the fixture intx-unmask-not-wired.toml:
        // the first lap closes, then VFIO keeps the line masked
        let (ok, detail) = lossless(&report(counts(1, 1, 1, 1, 0)));
        assert!(!ok);
        assert!(
            detail.contains(
                "step 7 dev0/intx0: raised 20 but L1's INTx handler ran 1: 19 lost, the line was not re-armed \
                 (1 EOIs reached KVM's resampler, VFIO unmasked the line 0 times)"
            ),
            "{detail}"
        );
        assert!(
            detail.contains(
                "1 EOIs, 0 VFIO unmasks (is the resample eventfd wired to VFIO's unmask?"
            ),
            "{detail}"
        );
    }

    #[test]
    fn spurious_assertions_and_missing_eois_fail() {
        let (ok, detail) = lossless(&report(counts(21, 21, 20, 20, 20)));
        assert!(!ok);
        assert!(detail.contains("1 spurious assertions"), "{detail}");
        let (ok, detail) = lossless(&report(counts(20, 20, 20, 19, 20)));
        assert!(!ok);
        assert!(
            detail.contains("the L2 EOIed 20 but 19 EOIs reached KVM's resampler"),
            "{detail}"
        );
        let (ok, detail) = lossless(&report(counts(20, 19, 20, 20, 20)));
        assert!(!ok);
        assert!(
            detail.contains("L1 took the line 20 times but KVM asserted the GSI 19"),
            "{detail}"
        );
    }
}
