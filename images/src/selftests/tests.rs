use super::*;
use crate::apt::DebPackage;
use check::tests::tiny_elf;

#[test]
fn suites_parse_print_and_normalize() {
    assert_eq!("kvm".parse::<SelftestSuite>().unwrap(), SelftestSuite::Kvm);
    assert_eq!(
        "vfio".parse::<SelftestSuite>().unwrap(),
        SelftestSuite::Vfio
    );
    assert_eq!(SelftestSuite::Vfio.to_string(), "vfio");
    let e = "KVM".parse::<SelftestSuite>().unwrap_err();
    assert!(e.is_bad_input());
    assert_eq!(
        e.to_string(),
        "unknown selftest suite \"KVM\": expected kvm or vfio"
    );
    use SelftestSuite::*;
    assert_eq!(normalize(&[Vfio, Kvm, Vfio]), [Kvm, Vfio]);
    assert_eq!(normalize(&[]), [Kvm, Vfio]);
    assert_eq!(serde_json::to_string(&Vfio).unwrap(), "\"vfio\"");
}

#[test]
fn key_changes_with_source_and_suites_only() {
    use SelftestSuite::*;
    let deb = |version: &str, sha: &str| {
        SourceId::Debian(DebPackage {
            name: "linux-source-7.2".into(),
            version: version.into(),
            sha256: sha.into(),
            size: 1,
        })
    };
    let base = entry_key(&deb("7.2.13-1", "aa"), &[Kvm, Vfio]);
    assert_eq!(
        base,
        entry_key(&deb("7.2.13-1", "aa"), &[Kvm, Vfio]),
        "deterministic"
    );
    assert_eq!(base.len(), 64);
    assert_ne!(
        base,
        entry_key(&deb("7.2.13-1", "bb"), &[Kvm, Vfio]),
        "package bytes"
    );
    assert_ne!(
        base,
        entry_key(&deb("7.2.12-1", "aa"), &[Kvm, Vfio]),
        "package version"
    );
    assert_ne!(base, entry_key(&deb("7.2.13-1", "aa"), &[Kvm]), "suites");
    assert_ne!(
        entry_key(&deb("7.2.13-1", "aa"), &[Vfio]),
        entry_key(&deb("7.2.13-1", "aa"), &[Kvm])
    );
    let commit = SourceId::Commit {
        tree: "/a".into(),
        rev: "v7.2".into(),
        sha: "abc".into(),
    };
    let dirty = SourceId::Checkout {
        tree: "/a".into(),
        head: "abc".into(),
        diff: b"+x".to_vec(),
        touched: vec!["x".into()],
    };
    assert_ne!(
        entry_key(&commit, &[Kvm]),
        entry_key(&dirty, &[Kvm]),
        "uncommitted changes"
    );
    assert_ne!(
        entry_key(&commit, &[Kvm]),
        entry_key(&deb("7.2.13-1", "aa"), &[Kvm])
    );
}

fn kernel(release: &str, description: &str) -> Kernel {
    Kernel {
        bzimage: "/k/bzImage".into(),
        modules_dir: "/k/lib/modules".into(),
        release: release.into(),
        description: description.into(),
    }
}

#[test]
fn kernels_map_to_their_sources() {
    let v = |s: &str| KernelVersion::parse(s).unwrap();
    let debian = kernel(
        "7.2.13+deb14-amd64",
        "debian linux-binary-7.2.13+deb14-amd64 7.2.13-1",
    );
    assert_eq!(kernel_upstream_version(&debian), Some(v("7.2.13")));
    // Debian 6.1's release does not carry the upstream patch level; the package version does
    let old = kernel(
        "6.1.0-47-amd64",
        "debian linux-image-6.1.0-47-amd64 6.1.170-3",
    );
    assert_eq!(kernel_upstream_version(&old), Some(v("6.1.170")));
    let bpo = kernel(
        "7.2.12+deb13-amd64",
        "debian linux-binary-7.2.12+deb13-amd64 7.2.12-1~bpo13+1",
    );
    assert_eq!(kernel_upstream_version(&bpo), Some(v("7.2.12")));
    assert_eq!(
        kernel_upstream_version(&kernel("7.3.0-rc4+", "path /x/bzImage")),
        Some(v("7.3.0"))
    );
    assert_eq!(
        kernel_upstream_version(&kernel("6.12.43", "path /x/bzImage")),
        Some(v("6.12.43"))
    );
    assert_eq!(
        kernel_upstream_version(&kernel("6.17", "path /x/bzImage")),
        Some(v("6.17.0"))
    );
    assert_eq!(
        kernel_upstream_version(&kernel("custom", "path /x/bzImage")),
        None
    );

    let spec: KernelSpec = "debian:6.1".parse().unwrap();
    assert_eq!(
        SelftestSource::for_kernel(&spec, &old).unwrap(),
        SelftestSource::Debian {
            version: v("6.1.170")
        }
    );
    let spec: KernelSpec = "git:/src/linux@v7.2".parse().unwrap();
    assert_eq!(
        SelftestSource::for_kernel(
            &spec,
            &kernel("7.2.0", "git /src/linux@v7.2 (0123456789ab)")
        )
        .unwrap(),
        SelftestSource::Tree {
            path: "/src/linux".into(),
            rev: Some("v7.2".into())
        }
    );
    let spec: KernelSpec = "path:/x/bzImage".parse().unwrap();
    let e = SelftestSource::for_kernel(&spec, &kernel("custom", "path /x/bzImage")).unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot tell the upstream version of kernel custom"),
        "{e}"
    );
}

/// A git tree shaped like the parts of a kernel tree the selftest build
/// touches: `make headers` writes usr/include; the kselftest makefile
/// builds `TARGETS` and installs them with a kselftest-list.txt. Its kvm
/// suite "compiles" by copying a static ELF and a script. No vfio suite.
fn fake_tree(dir: &Path) {
    let w = |rel: &str, text: &[u8]| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(
        "Makefile",
        b"headers:\n\tmkdir -p usr/include && echo ok > usr/include/ok.h\n",
    );
    w(
        "tools/testing/selftests/Makefile",
        b"all:\n\
          \tfor t in $(TARGETS); do $(MAKE) -C $$t || exit 1; done\n\
          install: all\n\
          \tmkdir -p $(INSTALL_PATH)/kselftest\n\
          \tprintf '#!/bin/sh\\n' > $(INSTALL_PATH)/run_kselftest.sh\n\
          \t: > $(INSTALL_PATH)/kselftest-list.txt\n\
          \tfor t in $(TARGETS); do mkdir -p $(INSTALL_PATH)/$$t && cp $$t/out/* $(INSTALL_PATH)/$$t/ && \
          for f in $$t/out/*; do echo \"$$t:$${f##*/}\" >> $(INSTALL_PATH)/kselftest-list.txt; done; done\n",
    );
    w(
        "tools/testing/selftests/kvm/Makefile",
        b"all:\n\
          \ttest -f ../../../../usr/include/ok.h\n\
          \ttest \"$(LDFLAGS)\" = -static\n\
          \tgrep -q REG reg.h\n\
          \ttest ! -e ../../../../drivers/big.c\n\
          \t@echo gcc -c prog.c -o prog.o\n\
          \tmkdir -p out && cp prog.bin out/prog_test && cp script.sh out/script_test.sh && chmod +x out/*\n",
    );
    w("tools/testing/selftests/kvm/prog.bin", &tiny_elf(None));
    w(
        "tools/testing/selftests/kvm/script.sh",
        b"#!/bin/sh\nexit 4\n",
    );
    // left packed, but for the target of a symlink the tests use
    w("drivers/dma/reg.h", b"#define REG 1\n");
    w("drivers/big.c", b"int big;\n");
    w("Documentation/notes.txt", b"notes\n");
    std::os::unix::fs::symlink(
        "../../../../drivers/dma/reg.h",
        dir.join("tools/testing/selftests/kvm/reg.h"),
    )
    .unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "commit",
            "-q",
            "-m",
            "fake linux",
        ],
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn entries(cache: &Cache) -> usize {
    fs::read_dir(cache.root().join("selftests"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_tree_builds_once_and_failures_are_reported_where_they_belong() {
    use SelftestSuite::*;
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("linux");
    fs::create_dir_all(&tree).unwrap();
    fake_tree(&tree);
    let head = git(&tree, &["rev-parse", "HEAD"]);
    let cache = Cache::new(t.path().join("cache"));
    let checkout = SelftestSource::Tree {
        path: tree.clone(),
        rev: None,
    };
    let mut events = Vec::new();
    let b = build_inner(&cache, &checkout, &[Vfio, Kvm], false, &mut |p| {
        events.push(p)
    })
    .unwrap();
    assert_eq!(
        b.source,
        format!(
            "git {} ({})",
            tree.canonicalize().unwrap().display(),
            &head[..12]
        )
    );
    assert_eq!(b.note, None);
    assert_eq!(b.suites.len(), 2);
    assert_eq!(
        (b.suites[0].suite, b.suites[0].tests.clone()),
        (Kvm, vec!["prog_test".into(), "script_test.sh".into()])
    );
    assert_eq!(b.suites[0].missing, None);
    assert_eq!(b.suites[1].suite, Vfio);
    assert!(b.suites[1].tests.is_empty());
    assert_eq!(
        b.suites[1].missing.as_deref(),
        Some("this source has no tools/testing/selftests/vfio")
    );
    assert_eq!(
        exec_kind(&b.root.join("kvm/prog_test")).unwrap(),
        ExecKind::StaticElf
    );
    assert!(b.root.join("run_kselftest.sh").is_file());
    assert!(b.root.parent().unwrap().join(ENTRY_LOG).is_file());
    assert!(
        events.contains(&Progress::InstallingKernelHeaders),
        "{events:?}"
    );
    assert!(
        events.contains(&Progress::InstallingSelftests),
        "{events:?}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Progress::CacheHit { .. })));
    // the user's tree was only read
    assert!(!tree.join("usr").exists());
    assert_eq!(git(&tree, &["status", "--porcelain"]), "");
    assert!(
        fs::read_dir(cache.root().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "work dir removed"
    );

    // again, and the same commit named by a revision: cache hits
    let mut events = Vec::new();
    let again = build_inner(&cache, &checkout, &[Kvm, Vfio], false, &mut |p| {
        events.push(p)
    })
    .unwrap();
    assert_eq!(again, b);
    assert!(
        matches!(events.last(), Some(Progress::CacheHit { .. })),
        "{events:?}"
    );
    let by_rev = SelftestSource::Tree {
        path: tree.clone(),
        rev: Some("main".into()),
    };
    let mut events = Vec::new();
    let hit = build_inner(&cache, &by_rev, &[Kvm, Vfio], false, &mut |p| {
        events.push(p)
    })
    .unwrap();
    assert_eq!(hit.root, b.root);
    assert!(
        hit.source.ends_with(&format!("@main ({})", &head[..12])),
        "{}",
        hit.source
    );
    assert!(
        matches!(events.last(), Some(Progress::CacheHit { .. })),
        "{events:?}"
    );
    assert_eq!(entries(&cache), 1);

    // an uncommitted change that breaks the kvm build: recorded, not fatal
    let kvm_mk = tree.join("tools/testing/selftests/kvm/Makefile");
    let good_mk = fs::read_to_string(&kvm_mk).unwrap();
    fs::write(
        &kvm_mk,
        good_mk.replace(
            "\ttest -f",
            "\t@echo 'prog.c:1:1: error: broken on purpose' && false\n\ttest -f",
        ),
    )
    .unwrap();
    let broken = build_inner(&cache, &checkout, &[Kvm], false, &mut |_| {}).unwrap();
    assert_ne!(broken.root, b.root);
    assert!(broken.suites[0].tests.is_empty());
    let why = broken.suites[0].missing.as_deref().unwrap();
    assert!(why.starts_with("the kvm selftests of this source do not build: prog.c:1:1: error: broken on purpose (whole log: "), "{why}");
    assert!(
        why.ends_with("/build.log)")
            && why.contains(&cache.root().join("selftests").display().to_string()),
        "{why}"
    );
    assert!(source_log(&broken).contains("broken on purpose"));
    assert_eq!(entries(&cache), 2);

    // uncommitted changes to files left packed still apply
    fs::write(&kvm_mk, &good_mk).unwrap();
    fs::write(tree.join("Documentation/notes.txt"), "more notes\n").unwrap();
    fs::write(tree.join("drivers/dma/reg.h"), "#define REG 2\n").unwrap();
    let docs = build_inner(&cache, &checkout, &[Kvm], false, &mut |_| {}).unwrap();
    assert_eq!(docs.suites[0].tests.len(), 2, "{:?}", docs.suites);
    assert_eq!(entries(&cache), 3);
    git(&tree, &["checkout", "-q", "--", "."]);

    // a test that needs a dynamic loader is an error and publishes nothing
    fs::write(
        tree.join("tools/testing/selftests/kvm/prog.bin"),
        tiny_elf(Some("/lib64/ld-linux-x86-64.so.2")),
    )
    .unwrap();
    let e = build_inner(&cache, &checkout, &[Kvm], false, &mut |_| {}).unwrap_err();
    let ImagesError::BadSelftest { path, why } = &e else {
        panic!("{e}")
    };
    assert!(path.ends_with("kvm/prog_test"), "{}", path.display());
    assert_eq!(
        why,
        "dynamically linked (needs /lib64/ld-linux-x86-64.so.2)"
    );
    assert!(!e.is_bad_input());
    assert_eq!(entries(&cache), 3);

    // a failed `make headers` is an error quoting the log, which is kept
    git(&tree, &["checkout", "-q", "--", "."]);
    fs::write(
        tree.join("Makefile"),
        "headers:\n\t@echo '*** no headers today' && false\n",
    )
    .unwrap();
    let e = build_inner(&cache, &checkout, &[Kvm], false, &mut |_| {}).unwrap_err();
    let ImagesError::SelftestBuildFailed { step, log, tail } = &e else {
        panic!("{e}")
    };
    assert_eq!(step, "make headers");
    assert!(tail.contains("*** no headers today"), "{tail}");
    assert!(
        log.starts_with(cache.root().join("logs")) && log.is_file(),
        "{}",
        log.display()
    );
    assert_eq!(entries(&cache), 3);
    assert!(
        fs::read_dir(cache.root().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "work dirs removed"
    );

    // a damaged entry is rebuilt
    git(&tree, &["checkout", "-q", "--", "."]);
    fs::remove_dir_all(b.root.join("kvm")).unwrap();
    let rebuilt = build_inner(&cache, &checkout, &[Kvm, Vfio], false, &mut |_| {}).unwrap();
    assert_eq!(rebuilt, b);
    assert!(b.root.join("kvm/prog_test").is_file());
}

fn source_log(b: &SelftestBuild) -> String {
    fs::read_to_string(b.root.parent().unwrap().join(ENTRY_LOG)).unwrap()
}

#[test]
fn not_a_kernel_tree_is_bad_input() {
    let t = tempfile::tempdir().unwrap();
    let cache = Cache::new(t.path().join("cache"));
    let e = build_selftests(
        &cache,
        &SelftestSource::Tree {
            path: t.path().into(),
            rev: None,
        },
        &[],
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("not a Linux source tree"),
        "{e}"
    );
    let tree = t.path().join("linux");
    fs::create_dir_all(&tree).unwrap();
    fake_tree(&tree);
    let e = build_selftests(
        &cache,
        &SelftestSource::Tree {
            path: tree,
            rev: Some("nope".into()),
        },
        &[],
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().ends_with("unknown revision nope"),
        "{e}"
    );
}
