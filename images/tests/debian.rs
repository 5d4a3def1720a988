//! Real apt download tests; run with TESTBED_VM_TESTS=1.

use std::path::Path;
use std::time::Instant;

use images::cpio::parse_newc;
use images::{
    build_initramfs, list_debian_kernels, resolve_kernel, Cache, InitramfsSpec, KernelSpec,
    Progress,
};

fn enabled() -> bool {
    if std::env::var("TESTBED_VM_TESTS").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set TESTBED_VM_TESTS=1 to run real apt downloads");
        false
    }
}

#[test]
fn debian_7_2_end_to_end() {
    if !enabled() {
        return;
    }
    let dir = std::env::var_os("TESTBED_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("images-test-{}", std::process::id()))
        });
    let cache = Cache::new(&dir);
    let spec: KernelSpec = "debian:7.2".parse().unwrap();

    let mut events = Vec::new();
    let t = Instant::now();
    let k = resolve_kernel(&cache, &spec, &mut |e| {
        if !matches!(e, Progress::Downloading { done, total, .. } if done != 0 && done != total) {
            eprintln!("{e:?}");
        }
        events.push(e)
    })
    .unwrap();
    eprintln!("cold resolve: {:?} -> {k:?}", t.elapsed());
    assert!(k.bzimage.is_file());
    assert!(k.release.starts_with("7.2."), "{}", k.release);
    assert!(k
        .modules_dir
        .ends_with(format!("lib/modules/{}", k.release)));
    assert!(k.modules_dir.join("kernel/virt/lib").is_dir());
    assert!(
        k.description.starts_with("debian linux-"),
        "{}",
        k.description
    );
    assert_eq!(images::bzimage_release(&k.bzimage).unwrap(), k.release);

    // second run: cache hit, no download, no apt
    let mut events2 = Vec::new();
    let t = Instant::now();
    let k2 = resolve_kernel(&cache, &spec, &mut |e| events2.push(e)).unwrap();
    let warm = t.elapsed();
    eprintln!("warm resolve: {warm:?} {events2:?}");
    assert_eq!(k, k2);
    assert!(events2
        .iter()
        .any(|e| matches!(e, Progress::CacheHit { .. })));
    assert!(!events2.iter().any(|e| matches!(
        e,
        Progress::Downloading { .. } | Progress::UpdatingPackageLists
    )));
    assert!(warm.as_secs() < 2);

    // an exact version of the same kernel shares the entry
    let exact: KernelSpec = format!(
        "debian:{}",
        k.release
            .split('+')
            .next()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
    )
    .parse()
    .unwrap();
    let mut events3 = Vec::new();
    let k3 = resolve_kernel(&cache, &exact, &mut |e| events3.push(e)).unwrap();
    assert_eq!(k3, k);
    assert!(!events3
        .iter()
        .any(|e| matches!(e, Progress::Downloading { .. })));

    // unknown versions list the nearest ones
    let e = resolve_kernel(&cache, &"debian:7.2.999".parse().unwrap(), &mut |_| {}).unwrap_err();
    eprintln!("{e}");
    assert!(
        e.to_string()
            .starts_with("no debian kernel matches debian:7.2.999; nearest available: 7.2."),
        "{e}"
    );

    let list = list_debian_kernels(&cache, &mut |_| {}).unwrap();
    assert!(list.windows(2).all(|w| w[0].version <= w[1].version));
    assert!(list
        .iter()
        .any(|k| k.version.major == 6 && k.version.minor == 1));

    // initramfs
    let roots = [
        "kvm_amd",
        "vfio_pci",
        "vfio_iommu_type1",
        "irqbypass",
        "pvpanic_mmio",
    ];
    let bb = Path::new("/bin/busybox");
    let spec = InitramfsSpec {
        kernel: &k,
        modules: &roots,
        optional: &[],
        agent: bb,
        busybox: bb,
        files: &[],
    };
    let t = Instant::now();
    let p = build_initramfs(&cache, &spec, &mut |_| {}).unwrap();
    let size = std::fs::metadata(&p).unwrap().len();
    eprintln!("initramfs: {:?}, {} bytes, {p:?}", t.elapsed(), size);
    let bytes = std::fs::read(&p).unwrap();
    let entries = parse_newc(&bytes).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for n in [
        "init",
        "bin/busybox",
        "bin/sh",
        "bin/testbed-agent",
        "dev/console",
        "etc/testbed/modules.order",
        "proc",
        "sys",
        "tmp",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let order_entry = entries
        .iter()
        .find(|e| e.name == "etc/testbed/modules.order")
        .unwrap();
    let order: Vec<String> = String::from_utf8(order_entry.data.clone())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    eprintln!("modules.order: {order:?}");
    for m in &order {
        assert!(
            names.contains(&format!("lib/modules/{}/{m}", k.release).as_str()),
            "{m}"
        );
    }
    let pos = |base: &str| {
        order
            .iter()
            .position(|p| p.rsplit('/').next().unwrap().replace('-', "_") == format!("{base}.ko"))
            .unwrap_or_else(|| panic!("{base} not in {order:?}"))
    };
    assert!(pos("irqbypass") < pos("kvm"));
    assert!(pos("kvm") < pos("kvm_amd"));
    assert!(pos("vfio") < pos("vfio_pci"));
    assert!(pos("vfio_pci_core") < pos("vfio_pci"));
    assert!(pos("vfio") < pos("vfio_iommu_type1"));
    assert!(pos("pvpanic") < pos("pvpanic_mmio"));

    // rebuild: same bytes, cache hit
    let mut ev = Vec::new();
    let t = Instant::now();
    let p2 = build_initramfs(&cache, &spec, &mut |e| ev.push(e)).unwrap();
    eprintln!("initramfs warm: {:?}", t.elapsed());
    assert_eq!(p, p2);
    assert!(ev.contains(&Progress::CacheHit {
        what: "initramfs".into()
    }));

    if std::env::var_os("TESTBED_TEST_CACHE").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
