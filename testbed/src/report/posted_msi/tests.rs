use std::path::Path;

use wire::{Done, L1Msi, Platform, StepReport};

use super::VtdPiCounts;
use crate::report::{Header, Report};
use crate::scenario;

const SCENARIO: &str = include_str!("../../../../scenarios/edu-producer-first.toml");

fn report(posted_msi: Option<bool>, l1: Option<L1Msi>) -> Report {
    let s = scenario::parse(Path::new("scenarios/edu-producer-first.toml"), SCENARIO).unwrap();
    let steps = (0..s.steps.len())
        .map(|index| StepReport {
            index,
            error: None,
            bypass: vec![],
            interrupts: vec![],
            kernel_warnings: vec![],
            l2: None,
        })
        .collect();
    let header = Header {
        variant: "intel-posted-msi".into(),
        kernel_release: "6.12.107-testbed+".into(),
        qemu_version: "10.0.13".into(),
    };
    let platform = Platform {
        posted_msi,
        ..Platform::default()
    };
    let done = Done {
        cleanup: vec![],
        cleanup_error: None,
        kernel_warnings: vec![],
        l1_msi: l1,
    };
    Report::from_parts(&s, header, platform, steps, Some(done), None)
}

fn l1(pci_msi: u64, pmn: u64) -> Option<L1Msi> {
    Some(L1Msi {
        pci_msi,
        posted_msi_notifications: Some(pmn),
    })
}

fn counts(posted: u64, notified: u64, outstanding: u64) -> VtdPiCounts {
    VtdPiCounts {
        posted,
        notified,
        outstanding,
        remapped: 812,
        ..VtdPiCounts::default()
    }
}

fn posted_msi(r: &Report) -> Option<(bool, String)> {
    r.checks()
        .into_iter()
        .find(|c| c.expectation == "posted-msi")
        .map(|c| (c.passed, c.detail))
}

#[test]
fn only_where_the_variant_posts_l1_msis() {
    assert_eq!(posted_msi(&report(Some(true), l1(5, 5))), None);
}

#[test]
fn every_msi_posted_and_every_notification_taken_passes() {
    let r = report(Some(true), l1(5, 4)).with_vtd_pi(Some(Ok(counts(5, 4, 1))));
    assert_eq!(
        posted_msi(&r),
        Some((
            true,
            "all 5 of L1's device MSIs posted by the IOMMU; L1 took every notification".into()
        ))
    );
}

#[test]
fn an_msi_that_was_remapped_instead_fails() {
    // L1 took 6, the IOMMU posted 5: one came through a remapped IRTE
    let r = report(Some(true), l1(6, 5)).with_vtd_pi(Some(Ok(counts(5, 5, 0))));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert_eq!(detail, "L1 took 6 device MSIs but the IOMMU posted 5");
}

#[test]
fn a_lost_notification_fails() {
    let r = report(Some(true), l1(5, 4)).with_vtd_pi(Some(Ok(counts(5, 5, 0))));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert_eq!(detail, "the IOMMU sent 5 notifications but L1 took 4");
}

#[test]
fn faults_and_inconsistent_counters_fail() {
    let mut c = counts(5, 4, 0);
    c.faults = 2;
    let r = report(Some(true), l1(5, 4)).with_vtd_pi(Some(Ok(c)));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert_eq!(
        detail,
        "the IOMMU could not post 2 interrupts (descriptor faults); \
         the IOMMU's counters disagree: posted 5 != notified 4 + suppressed 0 + outstanding 0"
    );
}

#[test]
fn a_kernel_that_does_not_post_says_why() {
    let r = report(
        None,
        Some(L1Msi {
            pci_msi: 5,
            posted_msi_notifications: None,
        }),
    )
    .with_vtd_pi(Some(Ok(counts(0, 0, 0))));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert!(detail.contains("CONFIG_X86_POSTED_MSI"), "{detail}");
    let r = report(Some(false), l1(5, 0)).with_vtd_pi(Some(Ok(counts(0, 0, 0))));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert!(detail.contains("intremap=posted_msi"), "{detail}");
}

#[test]
fn unreadable_counters_cannot_tell() {
    let r = report(Some(true), l1(5, 5)).with_vtd_pi(Some(Err(
        "qom-get /machine/peripheral/vtd0 pi-posted: no such property".into(),
    )));
    let (ok, detail) = posted_msi(&r).unwrap();
    assert!(!ok);
    assert!(detail.starts_with("cannot tell: qom-get"), "{detail}");
}

#[test]
fn counts_since() {
    let a = counts(10, 8, 2);
    let b = counts(4, 3, 1);
    assert_eq!(
        a.since(&b),
        VtdPiCounts {
            posted: 6,
            notified: 5,
            outstanding: 1,
            ..VtdPiCounts::default()
        }
    );
}
