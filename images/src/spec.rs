//! Kernel specs: `debian:MAJOR[.MINOR[.PATCH]]`, `path:BZIMAGE[,modules=DIR]`
//! and `git:TREE[@REV]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ImagesError;

/// An upstream kernel version, e.g. `7.2.13` (`7.2` parses as `7.2.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    /// Parse `7.2.13` or `7.2` (patch 0). Anything else (e.g. `7.3~rc4`) is `None`.
    pub fn parse(s: &str) -> Option<KernelVersion> {
        let mut it = s.split('.');
        let num = |p: Option<&str>| -> Option<u32> {
            let p = p?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let major = num(it.next())?;
        let minor = num(it.next())?;
        let patch = match it.next() {
            None => 0,
            p => num(p)?,
        };
        if it.next().is_some() {
            return None;
        }
        Some(KernelVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A version requirement: `7` (newest 7.x), `7.2` (newest 7.2.x), `7.2.13` (exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionReq {
    pub major: u32,
    pub minor: Option<u32>,
    pub patch: Option<u32>,
}

impl VersionReq {
    pub fn matches(&self, v: &KernelVersion) -> bool {
        self.major == v.major
            && self.minor.is_none_or(|m| m == v.minor)
            && self.patch.is_none_or(|p| p == v.patch)
    }

    /// The version this requirement points at when comparing distances.
    pub(crate) fn anchor(&self) -> KernelVersion {
        KernelVersion {
            major: self.major,
            minor: self.minor.unwrap_or(0),
            patch: self.patch.unwrap_or(0),
        }
    }
}

impl fmt::Display for VersionReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major)?;
        if let Some(m) = self.minor {
            write!(f, ".{m}")?;
            if let Some(p) = self.patch {
                write!(f, ".{p}")?;
            }
        }
        Ok(())
    }
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    /// A Debian amd64 binary kernel package, newest matching version.
    Debian(VersionReq),
    /// A local bzImage; modules in `modules`, or `/lib/modules/<release>`
    /// with the release read from the bzImage header.
    Path {
        bzimage: PathBuf,
        modules: Option<PathBuf>,
    },
    /// Built from a kernel git tree: `rev` is checked out in a worktree the
    /// testbed owns (the user's checkout is not touched); without `rev` the
    /// tree is built as it is, uncommitted changes included.
    Git { tree: PathBuf, rev: Option<String> },
}

fn bad(spec: &str, why: &str) -> ImagesError {
    ImagesError::BadKernelSpec {
        spec: spec.to_string(),
        why: why.to_string(),
    }
}

impl FromStr for KernelSpec {
    type Err = ImagesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(v) = s.strip_prefix("debian:") {
            const WHY: &str = "expected debian:MAJOR.MINOR[.PATCH]";
            let parts: Vec<&str> = v.split('.').collect();
            if parts.len() > 3
                || parts
                    .iter()
                    .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9)
            {
                return Err(bad(s, WHY));
            }
            let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(0)).collect();
            Ok(KernelSpec::Debian(VersionReq {
                major: n[0],
                minor: n.get(1).copied(),
                patch: n.get(2).copied(),
            }))
        } else if let Some(rest) = s.strip_prefix("path:") {
            let (bz, modules) = match rest.rsplit_once(",modules=") {
                Some((b, m)) => {
                    if m.is_empty() {
                        return Err(bad(s, "empty modules= directory"));
                    }
                    (b, Some(PathBuf::from(m)))
                }
                None => (rest, None),
            };
            if bz.is_empty() {
                return Err(bad(s, "expected path:BZIMAGE[,modules=DIR]"));
            }
            if bz.contains(",modules") || bz.contains(",") && modules.is_none() {
                return Err(bad(s, "expected path:BZIMAGE[,modules=DIR]"));
            }
            Ok(KernelSpec::Path {
                bzimage: PathBuf::from(bz),
                modules,
            })
        } else if let Some(rest) = s.strip_prefix("git:") {
            const WHY: &str = "expected git:TREE[@REV]";
            // a revision has no '/' after the '@' only when it is a rev, so
            // `git:/src/a@b/linux` is a path
            let (tree, rev) = match rest.rsplit_once('@') {
                Some((t, r)) if !r.contains('/') => (t, Some(r)),
                _ => (rest, None),
            };
            if tree.is_empty() || rev.is_some_and(|r| r.is_empty() || r.starts_with('-')) {
                return Err(bad(s, WHY));
            }
            Ok(KernelSpec::Git {
                tree: PathBuf::from(tree),
                rev: rev.map(str::to_string),
            })
        } else {
            Err(bad(
                s,
                "expected debian:MAJOR.MINOR[.PATCH], path:BZIMAGE[,modules=DIR] or git:TREE[@REV]",
            ))
        }
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelSpec::Debian(v) => write!(f, "debian:{v}"),
            KernelSpec::Path { bzimage, modules } => {
                write!(f, "path:{}", bzimage.display())?;
                if let Some(m) = modules {
                    write!(f, ",modules={}", m.display())?;
                }
                Ok(())
            }
            KernelSpec::Git { tree, rev } => {
                write!(f, "git:{}", tree.display())?;
                if let Some(r) = rev {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> KernelSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_good_specs() {
        assert_eq!(
            p("debian:7.2"),
            KernelSpec::Debian(VersionReq {
                major: 7,
                minor: Some(2),
                patch: None
            })
        );
        assert_eq!(
            p("debian:6.12.107"),
            KernelSpec::Debian(VersionReq {
                major: 6,
                minor: Some(12),
                patch: Some(107)
            })
        );
        assert_eq!(
            p("debian:7"),
            KernelSpec::Debian(VersionReq {
                major: 7,
                minor: None,
                patch: None
            })
        );
        assert_eq!(
            p("path:/boot/vmlinuz-x"),
            KernelSpec::Path {
                bzimage: "/boot/vmlinuz-x".into(),
                modules: None
            }
        );
        assert_eq!(
            p("path:/x/bzImage,modules=/x/lib/modules/7.2.0"),
            KernelSpec::Path {
                bzimage: "/x/bzImage".into(),
                modules: Some("/x/lib/modules/7.2.0".into())
            }
        );
        for s in [
            "debian:7.2",
            "debian:6.12.107",
            "debian:7",
            "path:/boot/vmlinuz-x",
            "path:/x/bzImage,modules=/x/lib/modules/7.2.0",
            "git:/src/linux@v6.17",
            "git:/src/linux",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_specs_with_messages() {
        let e = |s: &str| s.parse::<KernelSpec>().unwrap_err().to_string();
        assert_eq!(
            e("debian:x.y"),
            "bad kernel spec \"debian:x.y\": expected debian:MAJOR.MINOR[.PATCH]"
        );
        assert_eq!(
            e("debian:7.2.1.4"),
            "bad kernel spec \"debian:7.2.1.4\": expected debian:MAJOR.MINOR[.PATCH]"
        );
        assert_eq!(
            e("debian:"),
            "bad kernel spec \"debian:\": expected debian:MAJOR.MINOR[.PATCH]"
        );
        assert_eq!(
            e("debian:7."),
            "bad kernel spec \"debian:7.\": expected debian:MAJOR.MINOR[.PATCH]"
        );
        assert_eq!(
            e("ubuntu:7.2"),
            "bad kernel spec \"ubuntu:7.2\": expected debian:MAJOR.MINOR[.PATCH], path:BZIMAGE[,modules=DIR] or git:TREE[@REV]"
        );
        assert_eq!(
            e("path:"),
            "bad kernel spec \"path:\": expected path:BZIMAGE[,modules=DIR]"
        );
        assert_eq!(
            e("path:/x,modules="),
            "bad kernel spec \"path:/x,modules=\": empty modules= directory"
        );
        assert_eq!(
            e("path:/x,foo=1"),
            "bad kernel spec \"path:/x,foo=1\": expected path:BZIMAGE[,modules=DIR]"
        );
        assert_eq!(
            e("git:"),
            "bad kernel spec \"git:\": expected git:TREE[@REV]"
        );
        assert_eq!(
            e("git:/src/linux@"),
            "bad kernel spec \"git:/src/linux@\": expected git:TREE[@REV]"
        );
        assert_eq!(
            e("git:@HEAD"),
            "bad kernel spec \"git:@HEAD\": expected git:TREE[@REV]"
        );
        assert_eq!(
            e("git:/l@--force"),
            "bad kernel spec \"git:/l@--force\": expected git:TREE[@REV]"
        );
    }

    #[test]
    fn git_specs() {
        assert_eq!(
            p("git:/src/linux@v6.17~3"),
            KernelSpec::Git {
                tree: "/src/linux".into(),
                rev: Some("v6.17~3".into())
            }
        );
        assert_eq!(
            p("git:../linux"),
            KernelSpec::Git {
                tree: "../linux".into(),
                rev: None
            }
        );
        // an '@' inside the path is not a revision
        assert_eq!(
            p("git:/src/a@b/linux"),
            KernelSpec::Git {
                tree: "/src/a@b/linux".into(),
                rev: None
            }
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            KernelVersion::parse("7.2.13"),
            Some(KernelVersion {
                major: 7,
                minor: 2,
                patch: 13
            })
        );
        assert_eq!(
            KernelVersion::parse("6.18"),
            Some(KernelVersion {
                major: 6,
                minor: 18,
                patch: 0
            })
        );
        assert_eq!(KernelVersion::parse("7.3~rc4"), None);
        assert_eq!(KernelVersion::parse("7.2.13.1"), None);
        let r = VersionReq {
            major: 7,
            minor: Some(2),
            patch: None,
        };
        assert!(r.matches(&KernelVersion::parse("7.2.9").unwrap()));
        assert!(!r.matches(&KernelVersion::parse("7.20.9").unwrap()));
    }
}
