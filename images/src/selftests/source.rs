//! Where the selftests' sources come from: a Debian `linux-source-X.Y`
//! package (a plain tarball of Debian's patched tree) fetched through the
//! private apt state, or a kernel git tree exported with `git archive`.
//! Either way the tree is unpacked into a work directory; nothing is
//! installed and the user's tree is never written to.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt::{hex, linux_source_line, Apt, DebPackage};
use crate::cache::{write_atomic, Cache};
use crate::debver::{compare_debian_versions, upstream};
use crate::kernel::refresh_if_stale;
use crate::qemu::{git_apply, run_checked};
use crate::spec::KernelVersion;
use crate::{ImagesError, IoContext, Progress};

use super::SelftestSource;

/// What the cache key covers for the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceId {
    /// A `linux-source-X.Y` package (name, version and the archive's SHA256).
    Debian(DebPackage),
    /// A commit of a git tree (`rev` as the user named it, for messages).
    Commit {
        tree: PathBuf,
        rev: String,
        sha: String,
    },
    /// A checkout's HEAD plus its uncommitted changes to tracked files
    /// (`touched`: the paths the diff reads or writes, old names of renames too).
    Checkout {
        tree: PathBuf,
        head: String,
        diff: Vec<u8>,
        touched: Vec<String>,
    },
}

impl SourceId {
    /// What identifies the source's content: not the tree's path, so the same
    /// commit in another checkout is the same entry.
    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        match self {
            SourceId::Debian(p) => {
                format!("deb {} {} {}", p.name, p.version, p.sha256).into_bytes()
            }
            SourceId::Commit { sha, .. } => format!("commit {sha}").into_bytes(),
            // a clean checkout is its commit
            SourceId::Checkout { head, diff, .. } if diff.is_empty() => {
                format!("commit {head}").into_bytes()
            }
            SourceId::Checkout { head, diff, .. } => {
                format!("checkout {head} diff-sha256 {}", hex(&Sha256::digest(diff))).into_bytes()
            }
        }
    }

    /// e.g. `linux-source-7.2 7.2.13-1`, `git /src/linux@v7.2 (0123456789ab)`,
    /// `git /src/linux (0123456789ab+dirty)`.
    pub(crate) fn describe(&self) -> String {
        match self {
            SourceId::Debian(p) => format!("{} {}", p.name, p.version),
            SourceId::Commit { tree, rev, sha } => format!(
                "git {}@{rev} ({})",
                tree.display(),
                &sha[..sha.len().min(12)]
            ),
            SourceId::Checkout {
                tree, head, diff, ..
            } => format!(
                "git {} ({}{})",
                tree.display(),
                &head[..head.len().min(12)],
                if diff.is_empty() { "" } else { "+dirty" }
            ),
        }
    }
}

/// The source chosen for a request, and why when it is not the kernel's own line.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub id: SourceId,
    pub note: Option<String>,
}

/// Pick the `linux-source` package for a kernel of version `want`: that
/// exact upstream version when the archive has it, else the newest upload
/// of the same X.Y line, else the newest upload of the nearest newer line
/// (with a note saying so). Err: no line at or above `want`'s; the lines
/// that exist, each with its newest version.
pub(crate) fn select_source(
    available: &[DebPackage],
    want: KernelVersion,
) -> Result<(DebPackage, Option<String>), Vec<String>> {
    let mut lines: Vec<((u32, u32), &DebPackage)> = Vec::new();
    for p in available {
        let Some(line) = linux_source_line(&p.name) else {
            continue;
        };
        lines.push((line, p));
    }
    // ascending by line, then by Debian version: the last of a line is its newest
    lines.sort_by(|(la, a), (lb, b)| {
        la.cmp(lb)
            .then_with(|| compare_debian_versions(&a.version, &b.version))
    });
    let newest_of = |line: (u32, u32)| {
        lines
            .iter()
            .rev()
            .find(|(l, _)| *l == line)
            .map(|(_, p)| (*p).clone())
    };
    let want_line = (want.major, want.minor);
    let exact = lines
        .iter()
        .rev()
        .find(|(l, p)| *l == want_line && KernelVersion::parse(upstream(&p.version)) == Some(want));
    if let Some((_, p)) = exact {
        return Ok(((*p).clone(), None));
    }
    if let Some(p) = newest_of(want_line) {
        return Ok((p, None));
    }
    if let Some(&(line, _)) = lines.iter().find(|(l, _)| *l > want_line) {
        let p = newest_of(line).expect("the line has a package");
        let note = format!(
            "no linux-source-{}.{} in the archive: using {} ({}), the nearest newer line",
            want.major, want.minor, p.name, p.version
        );
        return Ok((p, Some(note)));
    }
    let mut names: Vec<(u32, u32)> = lines.iter().map(|(l, _)| *l).collect();
    names.dedup();
    Err(names
        .into_iter()
        .filter_map(newest_of)
        .map(|p| format!("{} ({})", p.name, p.version))
        .collect())
}

/// A remembered choice for one kernel version, so a cached build needs no apt.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    /// Seconds since the epoch.
    time: u64,
    package: DebPackage,
    note: Option<String>,
}

const REMEMBER_SECS: u64 = 24 * 3600;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn remembered_file(cache: &Cache, want: KernelVersion) -> PathBuf {
    cache.resolution_file(&format!("selftests-source-{want}"))
}

/// Resolve `source` to its identity (no download yet).
pub(crate) fn resolve(
    cache: &Cache,
    source: &SelftestSource,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolved, ImagesError> {
    match source {
        SelftestSource::Debian { version } => resolve_debian(cache, *version, progress),
        SelftestSource::Tree { path, rev } => Ok(Resolved {
            id: tree_identity(path, rev.as_deref())?,
            note: None,
        }),
    }
}

fn resolve_debian(
    cache: &Cache,
    want: KernelVersion,
    progress: &mut dyn FnMut(Progress),
) -> Result<Resolved, ImagesError> {
    let file = remembered_file(cache, want);
    let remembered: Option<Remembered> = fs::read(&file)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    if let Some(r) = &remembered {
        if now_secs().saturating_sub(r.time) < REMEMBER_SECS {
            return Ok(Resolved {
                id: SourceId::Debian(r.package.clone()),
                note: r.note.clone(),
            });
        }
    }
    let lookup = (|| -> Result<(DebPackage, Option<String>), ImagesError> {
        let _apt = cache.lock("apt")?;
        let apt = Apt::prepare(cache)?;
        let refreshed = refresh_if_stale(&apt, progress)?;
        match select_source(&apt.linux_source_packages()?, want) {
            Ok(chosen) => Ok(chosen),
            Err(_) if !refreshed => {
                apt.update(progress)?;
                select_source(&apt.linux_source_packages()?, want).map_err(|available| {
                    ImagesError::NoSelftestSource {
                        version: want.to_string(),
                        available,
                    }
                })
            }
            Err(available) => Err(ImagesError::NoSelftestSource {
                version: want.to_string(),
                available,
            }),
        }
    })();
    let (package, note) = match lookup {
        Ok(chosen) => chosen,
        // offline: a stale choice still names a package that existed
        Err(e) if !matches!(e, ImagesError::NoSelftestSource { .. }) && remembered.is_some() => {
            progress(Progress::UpdateFailed {
                error: e.to_string(),
            });
            let r = remembered.expect("checked");
            return Ok(Resolved {
                id: SourceId::Debian(r.package),
                note: r.note,
            });
        }
        Err(e) => return Err(e),
    };
    let r = Remembered {
        time: now_secs(),
        package: package.clone(),
        note: note.clone(),
    };
    write_atomic(&file, &serde_json::to_vec_pretty(&r).expect("serializes"))?;
    Ok(Resolved {
        id: SourceId::Debian(package),
        note,
    })
}

fn bad_tree(path: &Path, why: impl Into<String>) -> ImagesError {
    ImagesError::BadKernelTree {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

fn git_stdout(dir: &Path, args: &[&str]) -> Result<Option<Vec<u8>>, ImagesError> {
    let out = git(dir)
        .args(args)
        .output()
        .map_err(|e| ImagesError::io("run git (install git)", e))?;
    Ok(out.status.success().then_some(out.stdout))
}

/// A kernel git tree's identity at `rev`, or at HEAD plus its uncommitted changes.
pub(crate) fn tree_identity(path: &Path, rev: Option<&str>) -> Result<SourceId, ImagesError> {
    let tree = fs::canonicalize(path).map_err(|e| bad_tree(path, e.to_string()))?;
    if !tree.join("Makefile").is_file() || !tree.join("tools/testing/selftests/Makefile").is_file()
    {
        return Err(bad_tree(
            path,
            "not a Linux source tree (no Makefile or tools/testing/selftests/Makefile)",
        ));
    }
    let Some(head) = git_stdout(&tree, &["rev-parse", "--verify", "-q", "HEAD"])? else {
        return Err(bad_tree(path, "not a git checkout with a commit"));
    };
    let head = String::from_utf8_lossy(&head).trim().to_string();
    let prefix = git_stdout(&tree, &["rev-parse", "--show-prefix"])?.unwrap_or_default();
    if !String::from_utf8_lossy(&prefix).trim().is_empty() {
        return Err(bad_tree(
            path,
            "not the top directory of its git repository",
        ));
    }
    match rev {
        Some(rev) => {
            let sha = crate::kbuild::resolve_rev(&tree, rev)?;
            Ok(SourceId::Commit {
                tree,
                rev: rev.to_string(),
                sha,
            })
        }
        None => {
            let diff = git_stdout(
                &tree,
                &["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"],
            )?
            .ok_or_else(|| bad_tree(path, "git diff HEAD failed"))?;
            let names = git_stdout(
                &tree,
                &["diff", "HEAD", "--name-only", "--no-renames", "-z"],
            )?
            .ok_or_else(|| bad_tree(path, "git diff HEAD failed"))?;
            let touched = names
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            Ok(SourceId::Checkout {
                tree,
                head,
                diff,
                touched,
            })
        }
    }
}

/// Top-level parts of a kernel tree that neither `make headers` nor the
/// selftests read, left packed: four fifths of the bytes and over a third
/// of the files, so unpacking and removing the tree is several times
/// cheaper. A symlink under `tools/` into them (the VFIO selftests' driver
/// headers in `drivers/dma`) gets its target unpacked in a second pass.
pub(crate) const LEFT_PACKED: &[&str] = &[
    "Documentation",
    "drivers",
    "sound",
    "arch/alpha",
    "arch/arc",
    "arch/arm",
    "arch/arm64",
    "arch/csky",
    "arch/h8300",
    "arch/hexagon",
    "arch/ia64",
    "arch/loongarch",
    "arch/m68k",
    "arch/microblaze",
    "arch/mips",
    "arch/nds32",
    "arch/nios2",
    "arch/openrisc",
    "arch/parisc",
    "arch/powerpc",
    "arch/riscv",
    "arch/s390",
    "arch/sh",
    "arch/sparc",
    "arch/um",
    "arch/xtensa",
];

/// Unpack a downloaded `linux-source-X.Y` package (`deb`, removed after)
/// into `root` and return the source tarball it carries
/// (`root/usr/src/linux-source-X.Y.tar.*`).
pub(crate) fn linux_source_tarball(
    deb: &Path,
    root: &Path,
    package: &str,
) -> Result<PathBuf, ImagesError> {
    run_checked(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(root),
        &format!("dpkg-deb -x {}", deb.display()),
    )?;
    fs::remove_file(deb).ctx("remove", deb)?;
    let usr_src = root.join("usr/src");
    fs::read_dir(&usr_src)
        .ctx("read", &usr_src)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.contains(".tar"))
        })
        .ok_or_else(|| ImagesError::PackageLayout {
            package: package.to_string(),
            why: "no /usr/src/linux-source-*.tar.* inside".into(),
        })
}

/// Fill `dest` (created here) with the source tree, less [`LEFT_PACKED`];
/// `work` holds downloads and is the caller's to remove.
pub(crate) fn unpack(
    cache: &Cache,
    id: &SourceId,
    work: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImagesError> {
    fs::create_dir_all(dest).ctx("create directory", dest)?;
    match id {
        SourceId::Debian(pkg) => {
            let dl = work.join("dl");
            fs::create_dir_all(&dl).ctx("create directory", &dl)?;
            let deb = {
                let _apt = cache.lock("apt")?;
                let apt = Apt::prepare(cache)?;
                apt.download(pkg, &dl, progress)?
            };
            progress(Progress::Unpacking {
                package: id.describe(),
            });
            let root = work.join("deb-root");
            let tarball = linux_source_tarball(&deb, &root, &id.describe())?;
            untar(&tarball, dest)?;
            fs::remove_dir_all(&root).ctx("remove", &root)?;
        }
        SourceId::Commit { tree, sha, .. } => {
            progress(Progress::Unpacking {
                package: id.describe(),
            });
            git_export(tree, sha, dest, &[])?;
        }
        SourceId::Checkout {
            tree,
            head,
            diff,
            touched,
        } => {
            progress(Progress::Unpacking {
                package: id.describe(),
            });
            // the files the diff touches too, so that it applies
            git_export(tree, head, dest, touched)?;
            if !diff.is_empty() {
                let file = work.join("uncommitted.diff");
                fs::write(&file, diff).ctx("write", &file)?;
                git_apply(dest, &file).map_err(|output| {
                    bad_tree(
                        tree,
                        format!("its uncommitted changes do not apply to HEAD: {output}"),
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// Unpack a kernel source tarball (members under one top directory) into
/// `dest`, less [`LEFT_PACKED`], then the targets of symlinks into it.
pub(crate) fn untar(tarball: &Path, dest: &Path) -> Result<(), ImagesError> {
    // `*` stands for the top directory only
    let tar = |members: &mut dyn FnMut(&mut Command)| {
        let mut c = Command::new("tar");
        c.arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(dest)
            .arg("--strip-components=1");
        c.args(["--wildcards", "--no-wildcards-match-slash", "--anchored"]);
        members(&mut c);
        c
    };
    let mut first = tar(&mut |c| {
        c.args(LEFT_PACKED.iter().map(|p| format!("--exclude=*/{p}")));
    });
    run_checked(&mut first, &format!("tar -xf {}", tarball.display()))?;
    let wanted = dangling_targets(dest)?;
    if !wanted.is_empty() {
        // best effort: a target the tarball lacks fails the build, which says so
        let _ = tar(&mut |c| {
            c.args(wanted.iter().map(|p| format!("*/{p}")));
        })
        .output();
    }
    Ok(())
}

/// Targets (relative to `dest`) of symlinks under `dest/tools` that point
/// inside `dest` at something not unpacked.
pub(crate) fn dangling_targets(dest: &Path) -> Result<Vec<String>, ImagesError> {
    let mut out = Vec::new();
    let mut stack = vec![dest.join("tools")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_symlink() && fs::metadata(&p).is_err() {
                let target = fs::read_link(&p).ctx("readlink", &p)?;
                if let Some(rel) = lexical_join(&dir, &target)
                    .and_then(|t| t.strip_prefix(dest).ok().map(Path::to_path_buf))
                {
                    if let Some(s) = rel.to_str().filter(|s| !s.is_empty()) {
                        out.push(s.to_string());
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `base/target` with `.` and `..` resolved without the file system.
fn lexical_join(base: &Path, target: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = if target.is_absolute() {
        PathBuf::new()
    } else {
        base.to_path_buf()
    };
    for c in target.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `git archive COMMIT | tar -x -C dest`, less [`LEFT_PACKED`] but with
/// `also`, then the targets of symlinks into what was left out: the
/// commit's files, the checkout untouched.
fn git_export(tree: &Path, commit: &str, dest: &Path, also: &[String]) -> Result<(), ImagesError> {
    let mut paths: Vec<String> = vec![":(top)".into()];
    paths.extend(LEFT_PACKED.iter().map(|p| format!(":(top,exclude){p}")));
    git_archive(tree, commit, &paths, dest)?;
    // paths of the diff or of symlinks that are not in the commit are no error here
    let in_commit = |path: &String| {
        git(tree)
            .args(["cat-file", "-e", &format!("{commit}:{path}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let known: Vec<String> = also
        .iter()
        .cloned()
        .chain(dangling_targets(dest)?)
        .filter(in_commit)
        .map(|path| format!(":(top,literal){path}"))
        .collect();
    if !known.is_empty() {
        git_archive(tree, commit, &known, dest)?;
    }
    Ok(())
}

fn git_archive(
    tree: &Path,
    commit: &str,
    paths: &[String],
    dest: &Path,
) -> Result<(), ImagesError> {
    let what = format!("git -C {} archive {commit} | tar -x", tree.display());
    let mut archive = git(tree)
        .args(["archive", "--format=tar", commit, "--"])
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImagesError::io("run git archive", e))?;
    let stdout = archive.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .output()
        .map_err(|e| ImagesError::io("run tar", e))?;
    let git_out = archive
        .wait_with_output()
        .map_err(|e| ImagesError::io("wait for git archive", e))?;
    if !git_out.status.success() || !tar.status.success() {
        let (err, out) = if git_out.status.success() {
            (&tar.stderr, &tar.stdout)
        } else {
            (&git_out.stderr, &git_out.stdout)
        };
        return Err(ImagesError::Command {
            cmd: what,
            detail: crate::apt::last_lines(err, out),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> DebPackage {
        DebPackage {
            name: name.into(),
            version: version.into(),
            sha256: format!("sha-{name}-{version}"),
            size: 1,
        }
    }

    fn archive() -> Vec<DebPackage> {
        vec![
            pkg("linux-source-7.2", "7.2.12-1~bpo13+1"),
            pkg("linux-source-6.1", "6.1.176-1"),
            pkg("linux-source-7.2", "7.2.13-1"),
            pkg("linux-source-6.12", "6.12.117-1"),
            pkg("linux-source-6.1", "6.1.170-3"),
            pkg("linux-source-7.3", "7.3.4-1~bpo13+1"),
            pkg("linux-source-7.2", "7.2.9-1~bpo13+1"),
            pkg("linux-source-6.12", "6.12.95-1~bpo12+1"),
            pkg("linux-source", "7.2.13-1"),
        ]
    }

    fn v(s: &str) -> KernelVersion {
        KernelVersion::parse(s).unwrap()
    }

    fn pick(want: &str) -> Result<(String, Option<String>), Vec<String>> {
        select_source(&archive(), v(want))
            .map(|(p, note)| (format!("{} {}", p.name, p.version), note))
    }

    #[test]
    fn same_line_prefers_the_exact_version_else_the_newest_upload() {
        assert_eq!(
            pick("7.2.13").unwrap(),
            ("linux-source-7.2 7.2.13-1".into(), None)
        );
        assert_eq!(
            pick("7.2.12").unwrap(),
            ("linux-source-7.2 7.2.12-1~bpo13+1".into(), None)
        );
        // no 7.2.10 source: the newest of the line, still the kernel's own line
        assert_eq!(
            pick("7.2.10").unwrap(),
            ("linux-source-7.2 7.2.13-1".into(), None)
        );
        assert_eq!(
            pick("7.2").unwrap(),
            ("linux-source-7.2 7.2.13-1".into(), None)
        );
        assert_eq!(
            pick("6.12.107").unwrap(),
            ("linux-source-6.12 6.12.117-1".into(), None)
        );
        assert_eq!(
            pick("6.1.170").unwrap(),
            ("linux-source-6.1 6.1.170-3".into(), None)
        );
        assert_eq!(
            pick("6.1.0").unwrap(),
            ("linux-source-6.1 6.1.176-1".into(), None)
        );
    }

    #[test]
    fn a_line_without_source_takes_the_nearest_newer_line_and_says_so() {
        let (p, note) = pick("6.17.13").unwrap();
        assert_eq!(p, "linux-source-7.2 7.2.13-1");
        assert_eq!(
            note.as_deref(),
            Some("no linux-source-6.17 in the archive: using linux-source-7.2 (7.2.13-1), the nearest newer line")
        );
        let (p, note) = pick("6.16.3").unwrap();
        assert_eq!(p, "linux-source-7.2 7.2.13-1");
        assert!(note
            .unwrap()
            .starts_with("no linux-source-6.16 in the archive"));
        // numeric, not textual: 6.2 comes before 6.12
        let (p, note) = pick("6.2.1").unwrap();
        assert_eq!(p, "linux-source-6.12 6.12.117-1");
        assert!(note.is_some());
        let (p, _) = pick("5.10.200").unwrap();
        assert_eq!(p, "linux-source-6.1 6.1.176-1");
    }

    #[test]
    fn a_kernel_newer_than_every_source_names_what_exists() {
        let available = pick("7.4.1").unwrap_err();
        assert_eq!(
            available,
            [
                "linux-source-6.1 (6.1.176-1)",
                "linux-source-6.12 (6.12.117-1)",
                "linux-source-7.2 (7.2.13-1)",
                "linux-source-7.3 (7.3.4-1~bpo13+1)"
            ]
        );
        let e = ImagesError::NoSelftestSource {
            version: "7.4.1".into(),
            available,
        };
        assert_eq!(
            e.to_string(),
            "no linux-source package for 7.4.1 or a newer kernel line; the archive has linux-source-6.1 (6.1.176-1), \
             linux-source-6.12 (6.12.117-1), linux-source-7.2 (7.2.13-1), linux-source-7.3 (7.3.4-1~bpo13+1)"
        );
        assert_eq!(
            select_source(&[], v("7.2.13")).unwrap_err(),
            Vec::<String>::new()
        );
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn a_tarball_unpacks_without_the_unread_parts_but_with_symlink_targets() {
        let t = tempfile::tempdir().unwrap();
        let top = t.path().join("linux-source-9.9");
        write(&top, "Makefile", "headers:\n");
        write(&top, "drivers/dma/idxd/registers.h", "#define X 1\n");
        write(&top, "drivers/gpu/huge.h", "x");
        write(&top, "Documentation/index.rst", "x");
        write(&top, "arch/arm64/Makefile", "x");
        write(&top, "arch/x86/Makefile", "x");
        write(
            &top,
            "tools/perf/Documentation/perf.txt",
            "kept: not at the top",
        );
        let lib = top.join("tools/testing/selftests/vfio/lib/drivers/dsa");
        fs::create_dir_all(&lib).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../../drivers/dma/idxd/registers.h",
            lib.join("registers.h"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/nowhere/else.h", lib.join("outside.h")).unwrap();
        let tarball = t.path().join("linux-source-9.9.tar.xz");
        let ok = Command::new("tar")
            .arg("-cJf")
            .arg(&tarball)
            .arg("-C")
            .arg(t.path())
            .arg("linux-source-9.9")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let dest = t.path().join("src");
        fs::create_dir_all(&dest).unwrap();
        untar(&tarball, &dest).unwrap();
        for kept in [
            "Makefile",
            "arch/x86/Makefile",
            "tools/perf/Documentation/perf.txt",
            "drivers/dma/idxd/registers.h",
        ] {
            assert!(dest.join(kept).is_file(), "{kept}");
        }
        for left in ["drivers/gpu", "Documentation", "arch/arm64"] {
            assert!(!dest.join(left).exists(), "{left}");
        }
        let link = dest.join("tools/testing/selftests/vfio/lib/drivers/dsa/registers.h");
        assert_eq!(fs::read_to_string(link).unwrap(), "#define X 1\n");
        assert_eq!(
            dangling_targets(&dest).unwrap(),
            Vec::<String>::new(),
            "outside links are not ours to fix"
        );
    }

    #[test]
    fn lexical_paths() {
        assert_eq!(
            lexical_join(Path::new("/s/tools/a"), Path::new("../../drivers/x.h")),
            Some("/s/drivers/x.h".into())
        );
        assert_eq!(
            lexical_join(Path::new("/s/tools"), Path::new("./y/../z")),
            Some("/s/tools/z".into())
        );
        assert_eq!(
            lexical_join(Path::new("/s"), Path::new("/abs")),
            Some("/abs".into())
        );
        assert_eq!(lexical_join(Path::new("/"), Path::new("../../x")), None);
    }

    #[test]
    fn key_bytes_cover_content_not_place() {
        let a = SourceId::Debian(pkg("linux-source-7.2", "7.2.13-1"));
        let mut b = pkg("linux-source-7.2", "7.2.13-1");
        b.sha256 = "other".into();
        assert_ne!(a.key_bytes(), SourceId::Debian(b).key_bytes());
        let c1 = SourceId::Commit {
            tree: "/a".into(),
            rev: "v7.2".into(),
            sha: "abc".into(),
        };
        let c2 = SourceId::Commit {
            tree: "/b".into(),
            rev: "HEAD".into(),
            sha: "abc".into(),
        };
        assert_eq!(c1.key_bytes(), c2.key_bytes());
        let clean = SourceId::Checkout {
            tree: "/a".into(),
            head: "abc".into(),
            diff: vec![],
            touched: vec![],
        };
        let dirty = SourceId::Checkout {
            tree: "/a".into(),
            head: "abc".into(),
            diff: b"x".to_vec(),
            touched: vec!["f".into()],
        };
        let dirtier = SourceId::Checkout {
            tree: "/a".into(),
            head: "abc".into(),
            diff: b"y".to_vec(),
            touched: vec!["f".into()],
        };
        assert_ne!(clean.key_bytes(), dirty.key_bytes());
        assert_ne!(dirtier.key_bytes(), dirty.key_bytes());
        assert_eq!(
            clean.key_bytes(),
            c1.key_bytes(),
            "a clean checkout is its commit"
        );
        assert_eq!(a.describe(), "linux-source-7.2 7.2.13-1");
        assert_eq!(c1.describe(), "git /a@v7.2 (abc)");
        assert_eq!(dirty.describe(), "git /a (abc+dirty)");
    }
}
