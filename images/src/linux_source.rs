//! A kernel git tree made from Debian's kernel sources, for users without
//! a checkout and for bisects with a real history. Two kinds of source:
//!
//! - the `linux` *source* package (deb-src; trixie has 6.12.x): the
//!   upstream (orig) tarball is the first commit, then every patch of
//!   `debian/patches/series` is one commit, in series order, with the
//!   patch's subject as the message. Tags: `upstream` on the first commit,
//!   `patched` on the last.
//! - a `linux-source-X.Y` *binary* package (a plain tarball of Debian's
//!   already patched tree; the only source of the 7.x lines here): one
//!   commit, tagged `patched` (there is no upstream tree to tag).
//!
//! [`choose`] decides which one a version names. The sources come through
//! the private apt state, like the QEMU source; apt checks them against the
//! signed indexes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::{linux_source_line, Apt, DebPackage};
use crate::cache::Cache;
use crate::debver::{compare_debian_versions, upstream};
use crate::kernel::refresh_if_stale;
use crate::spec::KernelVersion;
use crate::{ImagesError, IoContext, Progress};

/// Which kind of Debian source `testbed kernel-tree` may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TreeFrom {
    /// The `linux` source package when it has the version, else a
    /// `linux-source-X.Y` package.
    #[default]
    Auto,
    /// Only the `linux` source package (patch series as commits).
    SourcePackage,
    /// Only a `linux-source-X.Y` binary package (one commit).
    LinuxSource,
}

/// What a version resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TreeChoice {
    /// A Debian version of the `linux` source package.
    SourcePackage(String),
    /// A `linux-source-X.Y` package.
    LinuxSource(DebPackage),
}

/// How the tree was made, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeOrigin {
    /// `linux` source package: orig tarball + one commit per patch;
    /// tags `upstream` and `patched`.
    SourcePackage,
    /// `linux-source-X.Y` package (its name): one commit, tag `patched`.
    LinuxSource(String),
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianTree {
    pub path: PathBuf,
    /// e.g. `6.12.107-1`
    pub debian_version: String,
    /// Commits: the orig tarball plus one per patch, or 1.
    pub commits: usize,
    pub origin: TreeOrigin,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ImagesError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImagesError::io(format!("run {what}"), e))?;
    if !out.status.success() {
        return Err(ImagesError::Command {
            cmd: what.to_string(),
            detail: crate::apt::last_lines(&out.stderr, &out.stdout),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The Debian version of `linux` that `version` names: an exact Debian
/// version (`6.12.107-1`) or an upstream one (`6.12.107`, newest Debian
/// revision of it).
fn pick_version(available: &[String], version: &str) -> Option<String> {
    if available.iter().any(|v| v == version) {
        return Some(version.to_string());
    }
    available
        .iter()
        .rev()
        .find(|v| v.rsplit_once('-').is_some_and(|(up, _)| up == version))
        .cloned()
}

/// The `linux-source-X.Y` package `version` names: an exact Debian
/// version (`7.3.4-1~bpo13+1`), an upstream one (`7.3.4`, its newest Debian
/// revision) or a line (`7.3`, its newest upload).
fn pick_linux_source(available: &[DebPackage], version: &str) -> Option<DebPackage> {
    let mut ours: Vec<&DebPackage> = available
        .iter()
        .filter(|p| linux_source_line(&p.name).is_some())
        .collect();
    ours.sort_by(|a, b| compare_debian_versions(&a.version, &b.version));
    if let Some(p) = ours.iter().rev().find(|p| p.version == version) {
        return Some((*p).clone());
    }
    let want = KernelVersion::parse(version)?;
    let is_line = version.split('.').count() == 2;
    ours.iter()
        .rev()
        .find(|p| {
            if is_line {
                linux_source_line(&p.name) == Some((want.major, want.minor))
            } else {
                KernelVersion::parse(upstream(&p.version)) == Some(want)
            }
        })
        .map(|p| (*p).clone())
}

/// Which source makes the tree of `version`. `series`: the `linux` source
/// package's Debian versions; `tarballs`: the `linux-source-X.Y` packages.
/// With [`TreeFrom::Auto`] the `linux` source package wins when it has the
/// version (its history is finer: one commit per patch). Err: what exists,
/// for the message.
pub(crate) fn choose(
    from: TreeFrom,
    version: &str,
    series: &[String],
    tarballs: &[DebPackage],
) -> Result<TreeChoice, Vec<String>> {
    if from != TreeFrom::LinuxSource {
        if let Some(v) = pick_version(series, version) {
            return Ok(TreeChoice::SourcePackage(v));
        }
    }
    if from != TreeFrom::SourcePackage {
        if let Some(p) = pick_linux_source(tarballs, version) {
            return Ok(TreeChoice::LinuxSource(p));
        }
    }
    let mut available = Vec::new();
    if from != TreeFrom::LinuxSource {
        available.extend(series.iter().map(|v| format!("linux {v} (source package)")));
    }
    if from != TreeFrom::SourcePackage {
        let mut t: Vec<&DebPackage> = tarballs
            .iter()
            .filter(|p| linux_source_line(&p.name).is_some())
            .collect();
        t.sort_by(|a, b| compare_debian_versions(&a.version, &b.version));
        available.extend(t.iter().map(|p| format!("{} {}", p.name, p.version)));
    }
    Err(available)
}

/// Makes `dest` (which must not exist) a git tree of Debian's kernel
/// source `version` (see [`choose`] and the module's documentation).
pub fn debian_linux_tree(
    cache: &Cache,
    version: &str,
    from: TreeFrom,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<DebianTree, ImagesError> {
    if dest.exists() {
        return Err(ImagesError::BadKernelTree {
            path: dest.to_path_buf(),
            why: "already exists".into(),
        });
    }
    let work = cache.work_dir("linux-src")?;
    let choice = {
        let _apt = cache.lock("apt")?;
        let apt = Apt::prepare(cache)?;
        if apt.has_source_lists() {
            refresh_if_stale(&apt, progress)?;
        } else {
            apt.update(progress)?;
        }
        let series = if from == TreeFrom::LinuxSource {
            Vec::new()
        } else {
            apt.source_versions("linux")?
        };
        let tarballs = if from == TreeFrom::SourcePackage {
            Vec::new()
        } else {
            apt.linux_source_packages()?
        };
        let choice = choose(from, version, &series, &tarballs).map_err(|nearest| {
            ImagesError::UnknownKernelVersion {
                spec: format!("kernel source {version} (linux source package or linux-source-X.Y)"),
                nearest,
            }
        })?;
        match &choice {
            TreeChoice::SourcePackage(v) => {
                progress(Progress::FetchingKernelSource { version: v.clone() });
                apt.download_source("linux", v, work.path())?;
            }
            TreeChoice::LinuxSource(p) => {
                progress(Progress::FetchingKernelSource {
                    version: format!("{} {}", p.name, p.version),
                });
                let dl = work.path().join("dl");
                fs::create_dir_all(&dl).ctx("create directory", &dl)?;
                apt.download(p, &dl, progress)?;
            }
        }
        choice
    };
    match choice {
        TreeChoice::SourcePackage(v) => series_tree(work.path(), v, dest, progress),
        TreeChoice::LinuxSource(p) => tarball_tree(work.path(), p, dest, progress),
    }
}

/// The directory a tree is built in beside `dest`, renamed into place when
/// done: a failure leaves nothing.
fn partial_beside(dest: &Path) -> Result<tempfile::TempDir, ImagesError> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).ctx("create directory", parent)?;
    tempfile::Builder::new()
        .prefix(".testbed-kernel-tree-")
        .tempdir_in(parent)
        .map_err(|e| ImagesError::io(format!("create a directory in {}", parent.display()), e))
}

fn publish(partial: tempfile::TempDir, dest: &Path) -> Result<(), ImagesError> {
    let kept = partial.keep();
    fs::rename(&kept, dest).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        ImagesError::io(format!("rename into {}", dest.display()), e)
    })
}

/// `git -C tree` with a fixed identity and dates: the same source gives the same commits.
fn git_in(tree: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(tree).args(args);
    c.env("GIT_AUTHOR_NAME", "Debian linux source")
        .env("GIT_AUTHOR_EMAIL", "testbed@localhost")
        .env("GIT_COMMITTER_NAME", "Debian linux source")
        .env("GIT_COMMITTER_EMAIL", "testbed@localhost")
        .env("GIT_AUTHOR_DATE", "2000-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z");
    c
}

/// The tree of a `linux-source-X.Y` package downloaded into `work/dl`: its
/// tarball as one commit, tag `patched`, branch `debian`.
fn tarball_tree(
    work: &Path,
    pkg: DebPackage,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<DebianTree, ImagesError> {
    let dl = work.join("dl");
    let deb = fs::read_dir(&dl)
        .ctx("read", &dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| ImagesError::PackageLayout {
            package: pkg.name.clone(),
            why: "not downloaded".into(),
        })?;
    let package = format!("{} {}", pkg.name, pkg.version);
    progress(Progress::Unpacking {
        package: package.clone(),
    });
    let root = work.join("deb-root");
    let tarball = crate::selftests::linux_source_tarball(&deb, &root, &package)?;
    let partial = partial_beside(dest)?;
    let tree = partial.path();
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(tree)
            .arg("--strip-components=1"),
        "tar -x linux-source tarball",
    )?;
    fs::remove_dir_all(&root).ctx("remove", &root)?;
    run(
        git_in(tree, &["init", "-q", "-b", "debian"]).arg("--template="),
        "git init",
    )?;
    run(&mut git_in(tree, &["add", "-A", "-f"]), "git add")?;
    let message = format!(
        "linux {} ({} {}: Debian's patched tree)",
        upstream(&pkg.version),
        pkg.name,
        pkg.version
    );
    run(
        &mut git_in(tree, &["commit", "-q", "-m", &message]),
        "git commit",
    )?;
    run(&mut git_in(tree, &["tag", "patched"]), "git tag")?;
    publish(partial, dest)?;
    Ok(DebianTree {
        path: dest.to_path_buf(),
        debian_version: pkg.version,
        commits: 1,
        origin: TreeOrigin::LinuxSource(pkg.name),
    })
}

/// The tree of the `linux` source package downloaded into `work`: orig
/// tarball, then one commit per patch.
fn series_tree(
    work: &Path,
    debian_version: String,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<DebianTree, ImagesError> {
    let find = |needle: &str| -> Result<PathBuf, ImagesError> {
        fs::read_dir(work)
            .ctx("read", work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(needle))
            })
            .ok_or_else(|| ImagesError::PackageLayout {
                package: format!("linux {debian_version}"),
                why: format!("no {needle} file"),
            })
    };
    let orig = find(".orig.tar.")?;
    let debian_tar = find(".debian.tar.")?;
    let debian_dir = work.join("debian-tar");
    fs::create_dir_all(&debian_dir).ctx("create directory", &debian_dir)?;
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&debian_tar)
            .arg("-C")
            .arg(&debian_dir),
        "tar -x debian tarball",
    )?;
    let patches = debian_dir.join("debian/patches");
    let series = fs::read_to_string(patches.join("series")).ctx("read", &patches.join("series"))?;

    let partial = partial_beside(dest)?;
    let tree = partial.path();
    progress(Progress::Unpacking {
        package: orig
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    });
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&orig)
            .arg("-C")
            .arg(tree)
            .arg("--strip-components=1"),
        "tar -x orig tarball",
    )?;
    let git = |args: &[&str]| git_in(tree, args);
    run(
        git(&["init", "-q", "-b", "debian"]).arg("--template="),
        "git init",
    )?;
    // -f: the kernel's .gitignore matches some files that belong to the source
    run(&mut git(&["add", "-A", "-f"]), "git add")?;
    let upstream = debian_version
        .rsplit_once('-')
        .map(|(u, _)| u)
        .unwrap_or(&debian_version)
        .to_string();
    run(
        &mut git(&[
            "commit",
            "-q",
            "-m",
            &format!("linux {upstream} (Debian orig tarball)"),
        ]),
        "git commit",
    )?;
    run(&mut git(&["tag", "upstream"]), "git tag")?;
    let names: Vec<&str> = series
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (i, name) in names.iter().enumerate() {
        progress(Progress::ApplyingKernelPatch {
            index: i + 1,
            total: names.len(),
            name: name.to_string(),
        });
        let file = patches.join(name);
        let patch = fs::File::open(&file).ctx("open", &file)?;
        let out = Command::new("patch")
            .args(["-p1", "-s", "-f", "--no-backup-if-mismatch", "-d"])
            .arg(tree)
            .stdin(patch)
            .output()
            .map_err(|e| ImagesError::io("run patch", e))?;
        if !out.status.success() {
            return Err(ImagesError::PatchFailed {
                patch: file,
                output: String::from_utf8_lossy(&out.stdout).into_owned(),
            });
        }
        let text = fs::read_to_string(&file).unwrap_or_default();
        let subject = patch_subject(&text).unwrap_or_else(|| name.to_string());
        run(&mut git(&["add", "-A", "-f"]), "git add")?;
        run(
            &mut git(&[
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &subject,
                "-m",
                &format!("debian/patches/{name}"),
            ]),
            "git commit",
        )?;
    }
    run(&mut git(&["tag", "patched"]), "git tag")?;
    publish(partial, dest)?;
    Ok(DebianTree {
        path: dest.to_path_buf(),
        debian_version,
        commits: names.len() + 1,
        origin: TreeOrigin::SourcePackage,
    })
}

/// A patch's subject: its `Subject:` (without `[PATCH ...]`) or the first
/// line of its DEP-3 `Description:`.
fn patch_subject(text: &str) -> Option<String> {
    for line in text.lines().take(40) {
        if let Some(s) = line.strip_prefix("Subject:") {
            let s = s.trim();
            let s = match s.strip_prefix('[') {
                Some(rest) if s.starts_with("[PATCH") => {
                    rest.split_once(']').map(|(_, r)| r.trim()).unwrap_or(s)
                }
                _ => s,
            };
            return Some(s.to_string()).filter(|s| !s.is_empty());
        }
        if let Some(s) = line.strip_prefix("Description:") {
            return Some(s.trim().to_string()).filter(|s| !s.is_empty());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(
            patch_subject("From: x\nSubject: [PATCH 2/3] kbuild: fix it\n\nbody").as_deref(),
            Some("kbuild: fix it")
        );
        assert_eq!(
            patch_subject("Subject: wireless: Add certs\n").as_deref(),
            Some("wireless: Add certs")
        );
        assert_eq!(
            patch_subject("Description: Disable autoload\n more\n").as_deref(),
            Some("Disable autoload")
        );
        assert_eq!(patch_subject("--- a/x\n+++ b/x\n"), None);
    }

    #[test]
    fn versions() {
        let v: Vec<String> = ["6.12.38-1", "6.12.107-1", "6.12.107-2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            pick_version(&v, "6.12.107-1").as_deref(),
            Some("6.12.107-1")
        );
        assert_eq!(pick_version(&v, "6.12.107").as_deref(), Some("6.12.107-2"));
        assert_eq!(pick_version(&v, "6.12.10"), None);
    }

    fn deb(name: &str, version: &str) -> DebPackage {
        DebPackage {
            name: name.into(),
            version: version.into(),
            sha256: String::new(),
            size: 1,
        }
    }

    /// What the archive offered in 2026-12: the `linux` source of trixie,
    /// and the linux-source-X.Y packages (7.2 twice, 7.3 from backports).
    fn archive() -> (Vec<String>, Vec<DebPackage>) {
        let series = ["6.12.107-1", "6.12.117-1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tarballs = vec![
            deb("linux-source-7.3", "7.3.4-1~bpo13+1"),
            deb("linux-source-6.12", "6.12.117-1"),
            deb("linux-source-7.2", "7.2.13-1"),
            deb("linux-source-7.2", "7.2.12-1~bpo13+1"),
            deb("linux-source-6.1", "6.1.176-1"),
            deb("linux-source", "7.2.13-1"),
        ];
        (series, tarballs)
    }

    fn pick(from: TreeFrom, version: &str) -> Result<String, Vec<String>> {
        let (series, tarballs) = archive();
        choose(from, version, &series, &tarballs).map(|c| match c {
            TreeChoice::SourcePackage(v) => format!("linux {v}"),
            TreeChoice::LinuxSource(p) => format!("{} {}", p.name, p.version),
        })
    }

    #[test]
    fn auto_prefers_the_patch_series_then_a_linux_source_package() {
        // the source package has it: one commit per patch wins
        assert_eq!(
            pick(TreeFrom::Auto, "6.12.117").unwrap(),
            "linux 6.12.117-1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "6.12.107-1").unwrap(),
            "linux 6.12.107-1"
        );
        // no linux source of that version: the linux-source-X.Y tarball
        assert_eq!(
            pick(TreeFrom::Auto, "7.3").unwrap(),
            "linux-source-7.3 7.3.4-1~bpo13+1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "7.3.4").unwrap(),
            "linux-source-7.3 7.3.4-1~bpo13+1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "7.2").unwrap(),
            "linux-source-7.2 7.2.13-1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "7.2.12").unwrap(),
            "linux-source-7.2 7.2.12-1~bpo13+1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "7.2.12-1~bpo13+1").unwrap(),
            "linux-source-7.2 7.2.12-1~bpo13+1"
        );
        // a line is never an exact source version: the line's tarball
        assert_eq!(
            pick(TreeFrom::Auto, "6.12").unwrap(),
            "linux-source-6.12 6.12.117-1"
        );
        assert_eq!(
            pick(TreeFrom::Auto, "6.1.176").unwrap(),
            "linux-source-6.1 6.1.176-1"
        );
    }

    #[test]
    fn an_explicit_kind_uses_only_that_kind() {
        assert_eq!(
            pick(TreeFrom::LinuxSource, "6.12.117").unwrap(),
            "linux-source-6.12 6.12.117-1"
        );
        assert_eq!(
            pick(TreeFrom::SourcePackage, "6.12.117").unwrap(),
            "linux 6.12.117-1"
        );
        assert_eq!(
            pick(TreeFrom::SourcePackage, "7.3").unwrap_err(),
            [
                "linux 6.12.107-1 (source package)",
                "linux 6.12.117-1 (source package)"
            ]
        );
        assert_eq!(
            pick(TreeFrom::LinuxSource, "6.12.107").unwrap_err(),
            [
                "linux-source-6.1 6.1.176-1",
                "linux-source-6.12 6.12.117-1",
                "linux-source-7.2 7.2.12-1~bpo13+1",
                "linux-source-7.2 7.2.13-1",
                "linux-source-7.3 7.3.4-1~bpo13+1"
            ]
        );
    }

    #[test]
    fn no_match_names_both_kinds_and_never_guesses() {
        // no 7.3.3 anywhere: an exact upstream version is not widened to its line
        let e = pick(TreeFrom::Auto, "7.3.3").unwrap_err();
        assert!(e.contains(&"linux 6.12.117-1 (source package)".to_string()));
        assert!(e.contains(&"linux-source-7.3 7.3.4-1~bpo13+1".to_string()));
        assert!(pick(TreeFrom::Auto, "7.4").is_err());
        assert!(pick(TreeFrom::Auto, "garbage").is_err());
        // the unversioned linux-source metapackage is no tree
        assert!(!e.iter().any(|a| a.starts_with("linux-source ")));
    }
}
