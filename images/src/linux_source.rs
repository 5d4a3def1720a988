//! A kernel git tree made from Debian's `linux` source package, for users
//! without a checkout and for bisects with a real history: the upstream
//! (orig) tarball is the first commit, then every patch of
//! `debian/patches/series` is one commit, in series order, with the patch's
//! subject as the message. Tags: `upstream` on the first commit, `patched`
//! on the last. The sources come through the private apt state (`deb-src`),
//! like the QEMU source; apt checks them against the signed Sources index.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::Apt;
use crate::cache::Cache;
use crate::kernel::refresh_if_stale;
use crate::{ImagesError, IoContext, Progress};

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianTree {
    pub path: PathBuf,
    /// e.g. `6.12.107-1`
    pub debian_version: String,
    /// Commits: the orig tarball plus one per patch.
    pub commits: usize,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ImagesError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| ImagesError::io(format!("run {what}"), e))?;
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
    available.iter().rev().find(|v| v.rsplit_once('-').is_some_and(|(up, _)| up == version)).cloned()
}

/// Makes `dest` (which must not exist) a git tree of Debian's `linux`
/// source `version`, one commit per patch.
pub fn debian_linux_tree(
    cache: &Cache,
    version: &str,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<DebianTree, ImagesError> {
    if dest.exists() {
        return Err(ImagesError::BadKernelTree { path: dest.to_path_buf(), why: "already exists".into() });
    }
    let work = cache.work_dir("linux-src")?;
    let debian_version = {
        let _apt = cache.lock("apt")?;
        let apt = Apt::prepare(cache)?;
        if apt.has_source_lists() {
            refresh_if_stale(&apt, progress)?;
        } else {
            apt.update(progress)?;
        }
        let available = apt.source_versions("linux")?;
        let Some(chosen) = pick_version(&available, version) else {
            return Err(ImagesError::UnknownKernelVersion {
                spec: format!("linux source {version}"),
                nearest: available,
            });
        };
        progress(Progress::FetchingKernelSource { version: chosen.clone() });
        apt.download_source("linux", &chosen, work.path())?;
        chosen
    };
    let find = |needle: &str| -> Result<PathBuf, ImagesError> {
        fs::read_dir(work.path())
            .ctx("read", work.path())?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(needle)))
            .ok_or_else(|| ImagesError::PackageLayout {
                package: format!("linux {debian_version}"),
                why: format!("no {needle} file"),
            })
    };
    let orig = find(".orig.tar.")?;
    let debian_tar = find(".debian.tar.")?;
    let debian_dir = work.path().join("debian-tar");
    fs::create_dir_all(&debian_dir).ctx("create directory", &debian_dir)?;
    run(Command::new("tar").arg("-xf").arg(&debian_tar).arg("-C").arg(&debian_dir), "tar -x debian tarball")?;
    let patches = debian_dir.join("debian/patches");
    let series = fs::read_to_string(patches.join("series")).ctx("read", &patches.join("series"))?;

    // built beside its destination and renamed into place: a failure leaves nothing
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).ctx("create directory", parent)?;
    let partial = tempfile::Builder::new()
        .prefix(".testbed-kernel-tree-")
        .tempdir_in(parent)
        .map_err(|e| ImagesError::io(format!("create a directory in {}", parent.display()), e))?;
    let tree = partial.path();
    progress(Progress::Unpacking { package: orig.file_name().unwrap_or_default().to_string_lossy().into_owned() });
    run(
        Command::new("tar").arg("-xf").arg(&orig).arg("-C").arg(tree).arg("--strip-components=1"),
        "tar -x orig tarball",
    )?;
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("-C").arg(tree).args(args);
        // fixed identity and dates: the same source gives the same commits
        c.env("GIT_AUTHOR_NAME", "Debian linux source")
            .env("GIT_AUTHOR_EMAIL", "testbed@localhost")
            .env("GIT_COMMITTER_NAME", "Debian linux source")
            .env("GIT_COMMITTER_EMAIL", "testbed@localhost")
            .env("GIT_AUTHOR_DATE", "2000-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z");
        c
    };
    run(git(&["init", "-q", "-b", "debian"]).arg("--template="), "git init")?;
    // -f: the kernel's .gitignore matches some files that belong to the source
    run(&mut git(&["add", "-A", "-f"]), "git add")?;
    let upstream = debian_version.rsplit_once('-').map(|(u, _)| u).unwrap_or(&debian_version).to_string();
    run(&mut git(&["commit", "-q", "-m", &format!("linux {upstream} (Debian orig tarball)")]), "git commit")?;
    run(&mut git(&["tag", "upstream"]), "git tag")?;
    let names: Vec<&str> = series
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (i, name) in names.iter().enumerate() {
        progress(Progress::ApplyingKernelPatch { index: i + 1, total: names.len(), name: name.to_string() });
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
            &mut git(&["commit", "-q", "--allow-empty", "-m", &subject, "-m", &format!("debian/patches/{name}")]),
            "git commit",
        )?;
    }
    run(&mut git(&["tag", "patched"]), "git tag")?;
    let kept = partial.keep();
    fs::rename(&kept, dest).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        ImagesError::io(format!("rename into {}", dest.display()), e)
    })?;
    Ok(DebianTree { path: dest.to_path_buf(), debian_version, commits: names.len() + 1 })
}

/// A patch's subject: its `Subject:` (without `[PATCH ...]`) or the first
/// line of its DEP-3 `Description:`.
fn patch_subject(text: &str) -> Option<String> {
    for line in text.lines().take(40) {
        if let Some(s) = line.strip_prefix("Subject:") {
            let s = s.trim();
            let s = match s.strip_prefix('[') {
                Some(rest) if s.starts_with("[PATCH") => rest.split_once(']').map(|(_, r)| r.trim()).unwrap_or(s),
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
        assert_eq!(patch_subject("Subject: wireless: Add certs\n").as_deref(), Some("wireless: Add certs"));
        assert_eq!(patch_subject("Description: Disable autoload\n more\n").as_deref(), Some("Disable autoload"));
        assert_eq!(patch_subject("--- a/x\n+++ b/x\n"), None);
    }

    #[test]
    fn versions() {
        let v: Vec<String> = ["6.12.38-1", "6.12.107-1", "6.12.107-2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pick_version(&v, "6.12.107-1").as_deref(), Some("6.12.107-1"));
        assert_eq!(pick_version(&v, "6.12.107").as_deref(), Some("6.12.107-2"));
        assert_eq!(pick_version(&v, "6.12.10"), None);
    }
}
