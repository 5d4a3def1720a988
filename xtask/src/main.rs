//! Developer chores: `cargo xtask setup | run | test | bench`.
//!
//! `setup` installs what a fresh Debian bookworm machine lacks: QEMU from
//! bookworm-backports (10.0, for amd-iommu xtsup and intel-iommu eim) and
//! busybox-static for the initramfs. The backports source is derived from
//! the machine's own apt sources, so no mirror is named here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

const USAGE: &str = "usage: cargo xtask <setup|run|test|bench> [ARGS...]
  setup   install host packages (QEMU from bookworm-backports, busybox-static)
  run     setup, then run every scenario on the default kernel and variants
  test    setup, then the whole test suite, tests that boot guests included
  bench   setup, then time one warm-cache scenario, phase by phase";

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/irqbypass-testbed-backports.sources";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match task.as_str() {
        "setup" => setup(&sh),
        "run" => {
            setup(&sh)?;
            cmd!(sh, "cargo run --release -p testbed -- run scenarios {rest...}").run()?;
            Ok(())
        }
        "test" => {
            setup(&sh)?;
            let _vm = sh.push_env("TESTBED_VM_TESTS", "1");
            if cmd!(sh, "cargo nextest --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
                cmd!(sh, "cargo nextest run --workspace --no-fail-fast {rest...}").run()?;
            } else {
                cmd!(sh, "cargo test --workspace --no-fail-fast {rest...}").run()?;
            }
            Ok(())
        }
        "bench" => {
            setup(&sh)?;
            cmd!(sh, "cargo run --release -p testbed -- bench scenarios/edu-producer-first.toml --variant amd-ir {rest...}")
                .run()?;
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Installs host packages unless they are already there.
fn setup(sh: &Shell) -> Result<()> {
    let qemu_ok = cmd!(sh, "qemu-system-x86_64 --version")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|v| qemu_major(&v) >= 10)
        .unwrap_or(false);
    let busybox_ok = Path::new("/bin/busybox").exists();
    if qemu_ok && busybox_ok {
        return Ok(());
    }
    if !is_root() {
        bail!("installing QEMU >= 10 and busybox-static needs root: run `sudo cargo xtask setup` once");
    }
    if !Path::new(BACKPORTS_SOURCES).exists() {
        let uri = debian_archive_uri()?;
        let suite = cmd!(sh, "sh -c '. /etc/os-release && echo $VERSION_CODENAME'").read()?;
        sh.write_file(
            BACKPORTS_SOURCES,
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {suite}-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )?;
    }
    let suite = cmd!(sh, "sh -c '. /etc/os-release && echo $VERSION_CODENAME'").read()?;
    let backports = format!("{suite}-backports");
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -q").run()?;
    cmd!(sh, "apt-get install -y -q --no-install-recommends -t {backports} qemu-system-x86").run()?;
    cmd!(sh, "apt-get install -y -q --no-install-recommends busybox-static").run()?;
    Ok(())
}

fn qemu_major(version_output: &str) -> u32 {
    version_output
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The Debian archive URI of the machine's own apt sources (deb822 or one-line).
fn debian_archive_uri() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sources") {
                candidates.push(std::fs::read_to_string(entry.path())?);
            }
        }
    }
    for text in &candidates {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            let signed = field("Signed-By:").unwrap_or_default();
            if suites.split_whitespace().any(|s| !s.contains('-')) && signed.contains("debian-archive") {
                if let Some(uri) = uris.split_whitespace().next() {
                    return Ok(uri.to_owned());
                }
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"deb") {
            if let Some(uri) = words.iter().skip(1).find(|w| !w.starts_with('[')) {
                if !words.iter().any(|w| w.ends_with("-security")) {
                    return Ok((*uri).to_owned());
                }
            }
        }
    }
    bail!("found no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources")
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_version_parsing() {
        assert_eq!(super::qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"), 10);
        assert_eq!(super::qemu_major("QEMU emulator version 7.2.15"), 7);
        assert_eq!(super::qemu_major("garbage"), 0);
    }
}
