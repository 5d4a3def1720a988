//! Builds the KVM and VFIO selftests from Debian's kernel sources for real;
//! run with TESTBED_VM_TESTS=1 (downloads about 165 MB per source and
//! builds for a few minutes).
//!
//! Uses `$TESTBED_TEST_CACHE`, else the default cache (the one `testbed`
//! uses), so a warm machine does not rebuild.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use images::{
    build_selftests, Cache, KernelVersion, Progress, SelftestSource, SelftestSuite, SuiteBuild,
};

fn enabled() -> bool {
    if std::env::var("TESTBED_VM_TESTS").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set TESTBED_VM_TESTS=1 to build selftests");
        false
    }
}

fn cache() -> Cache {
    match std::env::var_os("TESTBED_TEST_CACHE") {
        Some(d) => Cache::new(PathBuf::from(d)),
        None => Cache::default_location(),
    }
}

fn debian(version: &str) -> SelftestSource {
    SelftestSource::Debian {
        version: KernelVersion::parse(version).unwrap(),
    }
}

/// Progress events with the time they came, to report phase durations.
struct Timeline {
    start: Instant,
    events: Vec<(Duration, Progress)>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            events: Vec::new(),
        }
    }

    fn record(&mut self, p: Progress) {
        let at = self.start.elapsed();
        if !matches!(p, Progress::Downloading { .. }) {
            eprintln!("[{:6.1}s] {p}", at.as_secs_f64());
        }
        self.events.push((at, p));
    }

    fn first(&self, f: impl Fn(&Progress) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, p)| f(p)).map(|(t, _)| *t)
    }

    /// Phase durations between consecutive milestones.
    fn phases(&self, end: Duration) -> Vec<(&'static str, Duration)> {
        let building = |s: SelftestSuite| move |p: &Progress| matches!(p, Progress::BuildingSelftests { suite, .. } if *suite == s);
        let marks: Vec<(&'static str, Option<Duration>)> = vec![
            ("resolve", Some(Duration::ZERO)),
            (
                "download",
                self.first(|p| matches!(p, Progress::Downloading { .. })),
            ),
            (
                "unpack",
                self.first(|p| matches!(p, Progress::Unpacking { .. })),
            ),
            (
                "make headers",
                self.first(|p| *p == Progress::InstallingKernelHeaders),
            ),
            ("kvm build", self.first(building(SelftestSuite::Kvm))),
            ("vfio build", self.first(building(SelftestSuite::Vfio))),
            (
                "install, strip, check",
                self.first(|p| *p == Progress::InstallingSelftests),
            ),
        ];
        let present: Vec<(&'static str, Duration)> = marks
            .into_iter()
            .filter_map(|(n, t)| Some((n, t?)))
            .collect();
        present
            .iter()
            .enumerate()
            .map(|(i, (name, t))| {
                (
                    *name,
                    present.get(i + 1).map(|(_, n)| *n).unwrap_or(end) - *t,
                )
            })
            .collect()
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// No PT_INTERP program header (`file` is not needed: read the headers).
fn assert_static(path: &Path) {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        assert_ne!(
            ph.p_type(endian),
            object::elf::PT_INTERP,
            "{} is dynamically linked",
            path.display()
        );
    }
}

fn suite(b: &images::SelftestBuild, s: SelftestSuite) -> &SuiteBuild {
    b.suites.iter().find(|x| x.suite == s).unwrap()
}

#[test]
fn kvm_and_vfio_from_debian_7_2_build_statically_and_cache() {
    if !enabled() {
        return;
    }
    let cache = cache();
    let source = debian("7.2");
    let suites = [SelftestSuite::Kvm, SelftestSuite::Vfio];
    let mut timeline = Timeline::new();
    let t = timeline.start;
    let b = build_selftests(&cache, &source, &suites, &mut |p| timeline.record(p)).unwrap();
    let total = t.elapsed();
    eprintln!("source: {}", b.source);
    assert!(
        b.source.starts_with("linux-source-7.2 7.2."),
        "{}",
        b.source
    );
    assert_eq!(b.note, None);
    let kvm = suite(&b, SelftestSuite::Kvm);
    assert_eq!(kvm.missing, None);
    eprintln!("kvm: {} tests", kvm.tests.len());
    for want in ["xapic_ipi_test", "irqfd_test"] {
        assert!(
            kvm.tests.iter().any(|t| t == want),
            "{want} not in {:?}",
            kvm.tests
        );
        assert_static(&b.root.join("kvm").join(want));
    }
    for t in kvm.tests.iter().filter(|t| !t.ends_with(".sh")) {
        assert_static(&b.root.join("kvm").join(t));
    }
    let vfio = suite(&b, SelftestSuite::Vfio);
    match &vfio.missing {
        // 7.2.13's VFIO selftests use calloc_assert(), which its libvfio lacks
        Some(why) => eprintln!("vfio: {why}"),
        None => {
            eprintln!("vfio: {:?}", vfio.tests);
            assert!(
                vfio.tests.iter().any(|t| t == "vfio_pci_device_test"),
                "{:?}",
                vfio.tests
            );
            for t in &vfio.tests {
                assert_static(&b.root.join("vfio").join(t));
            }
        }
    }
    assert!(b.root.join("run_kselftest.sh").is_file());
    assert!(b.root.join("kvm/settings").is_file());
    let entry = b.root.parent().unwrap();
    eprintln!(
        "total {:.1}s; entry {} MB at {}",
        total.as_secs_f64(),
        dir_size(entry) / 1_000_000,
        entry.display()
    );
    for (name, d) in timeline.phases(total) {
        eprintln!("  {name:<24}{:6.1}s", d.as_secs_f64());
    }

    // the second call is a cache hit
    let t = Instant::now();
    let mut hit = false;
    let again = build_selftests(&cache, &source, &suites, &mut |p| {
        hit |= matches!(p, Progress::CacheHit { .. })
    })
    .unwrap();
    let elapsed = t.elapsed();
    eprintln!("cached: {:.3}s", elapsed.as_secs_f64());
    assert!(hit);
    assert_eq!(again, b);
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");

    // a kernel line without sources uses the nearest newer line: the same entry
    let near = build_selftests(&cache, &debian("6.17.13"), &suites, &mut |_| {}).unwrap();
    assert_eq!(near.root, b.root);
    let note = near.note.unwrap();
    assert!(
        note.starts_with("no linux-source-6.17 in the archive: using linux-source-7.2 (7.2."),
        "{note}"
    );
}

#[test]
fn vfio_from_debian_7_3_builds_with_the_igb_driver() {
    if !enabled() {
        return;
    }
    let cache = cache();
    let mut timeline = Timeline::new();
    let t = timeline.start;
    // every suite, as `testbed selftests` builds them: in CI the entry the
    // xtask's selftests phase made, not a second build
    let b = build_selftests(&cache, &debian("7.3"), &SelftestSuite::ALL, &mut |p| {
        timeline.record(p)
    })
    .unwrap();
    let total = t.elapsed();
    eprintln!("source: {}", b.source);
    let vfio = suite(&b, SelftestSuite::Vfio);
    assert_eq!(vfio.missing, None);
    eprintln!("vfio: {:?}", vfio.tests);
    for want in [
        "vfio_pci_device_test",
        "vfio_pci_driver_test",
        "vfio_dma_mapping_test",
    ] {
        assert!(
            vfio.tests.iter().any(|t| t == want),
            "{want} not in {:?}",
            vfio.tests
        );
    }
    for t in &vfio.tests {
        assert_static(&b.root.join("vfio").join(t));
    }
    let entry = b.root.parent().unwrap();
    eprintln!(
        "total {:.1}s; entry {} MB",
        total.as_secs_f64(),
        dir_size(entry) / 1_000_000
    );
    for (name, d) in timeline.phases(total) {
        eprintln!("  {name:<24}{:6.1}s", d.as_secs_f64());
    }
}
