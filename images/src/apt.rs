//! A private apt state inside the cache, used only to list and download
//! Debian kernel packages. It never touches the system's apt state: every
//! directory apt writes to is redirected, the system's sources are not read,
//! and the system's update/dpkg hooks (which may clean /var/cache/apt) are
//! cleared.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::cache::Cache;
use crate::debver::{compare_debian_versions, upstream};
use crate::spec::{KernelVersion, VersionReq};
use crate::{ImagesError, IoContext, Progress};

/// Suites the private apt state follows.
pub(crate) const SUITES: &[&str] = &[
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "sid",
];

/// Suites whose source packages the private apt state lists (`deb-src`):
/// the pinned QEMU source comes from trixie. Only these, because every
/// suite's Sources index is ~10 MB on the first update.
pub(crate) const SOURCE_SUITES: &[&str] = &["trixie"];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One `.deb` to download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebPackage {
    pub name: String,
    /// Debian version, e.g. `7.2.13-1`.
    pub version: String,
    /// SHA256 of the .deb from the archive metadata.
    pub sha256: String,
    pub size: u64,
}

/// A Debian amd64 kernel available through the private apt state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianKernel {
    /// Upstream version from the package `Version:` field.
    pub version: KernelVersion,
    /// Debian version of the image package, e.g. `7.2.13-1~bpo13+1`.
    pub debian_version: String,
    /// The `linux-image-*` package (a metapackage for newer kernels).
    pub image_package: DebPackage,
    /// What gets downloaded and unpacked: `linux-binary-*` and
    /// `linux-modules-*` for the split layout, else the image package.
    pub packages: Vec<DebPackage>,
}

impl DebianKernel {
    /// Content key of the kernel: a sha256 over the .deb SHA256s.
    pub(crate) fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"irqbypass-testbed debian kernel v1\0");
        h.update(self.image_package.sha256.as_bytes());
        for p in &self.packages {
            h.update(b"\0");
            h.update(p.sha256.as_bytes());
        }
        hex(&h.finalize())
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `URIs:` of the first enabled deb822 `deb` entry whose `Suites:`
/// contain `suite`.
pub fn archive_uri_from_deb822(text: &str, suite: &str) -> Option<String> {
    for para in paragraphs(text) {
        let get = |k: &str| {
            para.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let types = get("Types").unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if get("Enabled").is_some_and(|e| e.trim().eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("Suites")
            .unwrap_or("")
            .split_whitespace()
            .any(|s| s == suite)
        {
            continue;
        }
        if let Some(uri) = get("URIs").and_then(|u| u.split_whitespace().next()) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// The URI of the first one-line `deb [opts] URI suite comps` entry for `suite`.
pub fn archive_uri_from_one_line(text: &str, suite: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => rest = rest[i + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(s)) = (words.next(), words.next()) else {
            continue;
        };
        if s == suite {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// deb822 paragraphs as (key, value) lists; continuation lines are joined.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = cur.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn machine_suite() -> String {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("VERSION_CODENAME=") {
            let v = v.trim().trim_matches('"');
            if !v.is_empty() {
                return v.to_string();
            }
        }
    }
    "bookworm".to_string()
}

/// Derive the Debian archive URI from the machine's own apt sources.
pub(crate) fn system_archive_uri(etc_apt: &Path) -> Result<String, ImagesError> {
    let suite = machine_suite();
    let mut files: Vec<PathBuf> = fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        if let Some(u) = fs::read_to_string(f)
            .ok()
            .and_then(|t| archive_uri_from_deb822(&t, &suite))
        {
            return Ok(u);
        }
    }
    let mut lists: Vec<PathBuf> = vec![etc_apt.join("sources.list")];
    lists.extend(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "list"))
            .cloned(),
    );
    for f in lists {
        if let Some(u) = fs::read_to_string(&f)
            .ok()
            .and_then(|t| archive_uri_from_one_line(&t, &suite))
        {
            return Ok(u);
        }
    }
    Err(ImagesError::NoArchive(format!(
        "no deb entry for suite {suite} in {}",
        etc_apt.display()
    )))
}

/// The private apt state.
pub(crate) struct Apt {
    dir: PathBuf,
    conf: PathBuf,
}

const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl Apt {
    /// Create (or refresh) the private configuration. Call with the apt lock held.
    pub(crate) fn prepare(cache: &Cache) -> Result<Apt, ImagesError> {
        let dir = cache.dir("apt")?;
        for d in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let p = dir.join(d);
            fs::create_dir_all(&p).ctx("create directory", &p)?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, b"").ctx("write", &status)?;
        }
        let uri = system_archive_uri(Path::new("/etc/apt"))?;
        let sources = format!(
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: main\nArchitectures: amd64\nSigned-By: {KEYRING}\n\n\
             Types: deb-src\nURIs: {uri}\nSuites: {}\nComponents: main\nSigned-By: {KEYRING}\n",
            SUITES.join(" "),
            SOURCE_SUITES.join(" ")
        );
        write_if_changed(&dir.join("sources.list.d/testbed.sources"), &sources)?;
        let d = dir.display();
        let mut conf = format!(
            "Dir::State \"{d}/state\";\n\
             Dir::State::Lists \"{d}/state/lists\";\n\
             Dir::State::status \"{d}/state/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Dir::Etc::SourceList \"/dev/null\";\n\
             Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
             Dir::Etc::Preferences \"/dev/null\";\n\
             Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
             Dir::Log \"{d}/log\";\n\
             APT::Architecture \"amd64\";\n\
             #clear APT::Architectures;\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages \"none\";\n\
             APT::Sandbox::User \"root\";\n"
        );
        // never run the system's hooks: they clean the *system* apt cache
        for k in [
            "APT::Update::Pre-Invoke",
            "APT::Update::Post-Invoke",
            "APT::Update::Post-Invoke-Success",
            "DPkg::Pre-Invoke",
            "DPkg::Post-Invoke",
            "DPkg::Pre-Install-Pkgs",
            "Acquire::IndexTargets::deb::DEP-11",
            "Acquire::IndexTargets::deb::DEP-11-icons-small",
            "Acquire::IndexTargets::deb::DEP-11-icons",
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi",
            "Acquire::IndexTargets::deb::DEP-11-icons-large",
            "Acquire::IndexTargets::deb::DEP-11-icons-large-hidpi",
            "Acquire::IndexTargets::deb::Contents-deb",
        ] {
            conf.push_str(&format!("#clear {k};\n"));
        }
        let conf_path = dir.join("apt.conf");
        write_if_changed(&conf_path, &conf)?;
        Ok(Apt {
            dir,
            conf: conf_path,
        })
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("updated.stamp")
    }

    /// Whether the lists are missing or older than a day.
    pub(crate) fn lists_stale(&self) -> bool {
        match fs::metadata(self.stamp()).and_then(|m| m.modified()) {
            Ok(t) => SystemTime::now()
                .duration_since(t)
                .map(|age| age > LISTS_MAX_AGE)
                .unwrap_or(false),
            Err(_) => true,
        }
    }

    pub(crate) fn has_lists(&self) -> bool {
        self.stamp().exists()
    }

    /// Whether the lists include source indices (`deb-src`); false for an
    /// apt state last updated before its sources gained `deb-src` entries.
    pub(crate) fn has_source_lists(&self) -> bool {
        fs::read_dir(self.dir.join("state/lists"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_source_Sources"))
            })
            .unwrap_or(false)
    }

    /// `apt-get source --download-only NAME=VERSION` into `dir` (the .dsc,
    /// the orig tarball and the Debian tarball; apt checks them against the
    /// signed Sources index). Nothing is unpacked.
    pub(crate) fn download_source(
        &self,
        name: &str,
        version: &str,
        dir: &Path,
    ) -> Result<(), ImagesError> {
        let sh = shell()?;
        sh.change_dir(dir);
        let conf = &self.conf;
        let spec = format!("{name}={version}");
        let out = cmd!(sh, "apt-get -c {conf} -q source --download-only {spec}")
            .quiet()
            .ignore_status()
            .output()
            .map_err(cmd_err("apt-get source"))?;
        if !out.status.success() {
            return Err(ImagesError::Command {
                cmd: format!("apt-get source --download-only {spec}"),
                detail: last_lines(&out.stderr, &out.stdout),
            });
        }
        Ok(())
    }

    pub(crate) fn update(&self, progress: &mut dyn FnMut(Progress)) -> Result<(), ImagesError> {
        progress(Progress::UpdatingPackageLists);
        let sh = shell()?;
        let conf = &self.conf;
        let out = cmd!(sh, "apt-get -c {conf} -q --error-on=any update")
            .quiet()
            .ignore_status()
            .output()
            .map_err(cmd_err("apt-get update"))?;
        if !out.status.success() {
            return Err(ImagesError::Command {
                cmd: "apt-get update".into(),
                detail: last_lines(&out.stderr, &out.stdout),
            });
        }
        fs::write(self.stamp(), b"").ctx("write", &self.stamp())?;
        Ok(())
    }

    fn show(&self, names: &[String]) -> Result<Vec<BTreeMap<String, String>>, ImagesError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let sh = shell()?;
        let conf = &self.conf;
        let out = cmd!(sh, "apt-cache -c {conf} show {names...}")
            .quiet()
            .ignore_status()
            .output()
            .map_err(cmd_err("apt-cache show"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(paragraphs(&text)
            .into_iter()
            .map(|p| p.into_iter().collect())
            .collect())
    }

    /// The Debian versions of source package `name` in the source lists.
    pub(crate) fn source_versions(&self, name: &str) -> Result<Vec<String>, ImagesError> {
        let sh = shell()?;
        let conf = &self.conf;
        let out = cmd!(sh, "apt-cache -c {conf} showsrc {name}")
            .quiet()
            .ignore_status()
            .output()
            .map_err(cmd_err("apt-cache showsrc"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut versions: Vec<String> = paragraphs(&text)
            .into_iter()
            .filter(|p| p.iter().any(|(k, v)| k == "Package" && v == name))
            .filter_map(|p| p.into_iter().find(|(k, _)| k == "Version").map(|(_, v)| v))
            .collect();
        versions.sort_by(|a, b| compare_debian_versions(a, b));
        versions.dedup();
        Ok(versions)
    }

    /// The package names the lists have with `prefix` that `keep` accepts, sorted.
    fn package_names(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ImagesError> {
        let sh = shell()?;
        let conf = &self.conf;
        let out = cmd!(sh, "apt-cache -c {conf} pkgnames {prefix}")
            .quiet()
            .ignore_status()
            .output()
            .map_err(cmd_err("apt-cache pkgnames"))?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| keep(n))
            .map(String::from)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every amd64 kernel in the lists, sorted by version then Debian version.
    pub(crate) fn kernels(&self) -> Result<Vec<DebianKernel>, ImagesError> {
        let names = self.package_names("linux-image-", is_kernel_image_name)?;
        let images = self.show(&names)?;
        let mut dep_names = BTreeSet::new();
        for r in &images {
            for (n, _) in split_deps(r.get("Depends").map(String::as_str).unwrap_or("")) {
                dep_names.insert(n);
            }
        }
        let deps = self.show(&dep_names.into_iter().collect::<Vec<_>>())?;
        Ok(kernels_from_records(&images, &deps))
    }

    /// Every `linux-source-X.Y` package (each version the lists hold): the
    /// plain source tarballs of Debian's kernels.
    pub(crate) fn linux_source_packages(&self) -> Result<Vec<DebPackage>, ImagesError> {
        let names = self.package_names("linux-source-", |n| linux_source_line(n).is_some())?;
        let mut seen = BTreeSet::new();
        Ok(self
            .show(&names)?
            .iter()
            .filter(|r| {
                linux_source_line(r.get("Package").map(String::as_str).unwrap_or("")).is_some()
            })
            .filter_map(deb_from_record)
            .filter(|d| seen.insert((d.name.clone(), d.version.clone())))
            .collect())
    }

    /// `apt-get download` one package into `dir`, verify it and return its path.
    pub(crate) fn download(
        &self,
        pkg: &DebPackage,
        dir: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf, ImagesError> {
        let spec = format!("{}={}", pkg.name, pkg.version);
        let conf = self.conf.clone();
        let prefix = format!("{}_", pkg.name);
        let find = |dir: &Path| -> Option<(PathBuf, u64)> {
            let rd = fs::read_dir(dir).ok()?;
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .next()
        };
        progress(Progress::Downloading {
            package: pkg.name.clone(),
            done: 0,
            total: pkg.size,
        });
        let result = std::thread::scope(|s| {
            let h = s.spawn(|| -> Result<std::process::Output, ImagesError> {
                let sh = shell()?;
                sh.change_dir(dir);
                cmd!(sh, "apt-get -c {conf} -q download {spec}")
                    .quiet()
                    .ignore_status()
                    .output()
                    .map_err(cmd_err("apt-get download"))
            });
            let mut last = 0;
            while !h.is_finished() {
                std::thread::sleep(Duration::from_millis(200));
                if let Some((_, n)) = find(dir) {
                    if n != last {
                        last = n;
                        progress(Progress::Downloading {
                            package: pkg.name.clone(),
                            done: n.min(pkg.size),
                            total: pkg.size,
                        });
                    }
                }
            }
            h.join().unwrap_or_else(|_| {
                Err(ImagesError::Command {
                    cmd: "apt-get download".into(),
                    detail: "panicked".into(),
                })
            })
        })?;
        if !result.status.success() {
            return Err(ImagesError::Command {
                cmd: format!("apt-get download {spec}"),
                detail: last_lines(&result.stderr, &result.stdout),
            });
        }
        let (path, _) = find(dir).ok_or_else(|| ImagesError::Command {
            cmd: format!("apt-get download {spec}"),
            detail: "no .deb file appeared".into(),
        })?;
        progress(Progress::Downloading {
            package: pkg.name.clone(),
            done: pkg.size,
            total: pkg.size,
        });
        let actual = sha256_file(&path)?;
        if !actual.eq_ignore_ascii_case(&pkg.sha256) {
            return Err(ImagesError::Checksum {
                file: path.display().to_string(),
                expected: pkg.sha256.clone(),
                actual,
            });
        }
        Ok(path)
    }
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, ImagesError> {
    use std::io::Read;
    let mut f = fs::File::open(path).ctx("open", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn shell() -> Result<Shell, ImagesError> {
    Shell::new().map_err(|e| ImagesError::Command {
        cmd: "shell".into(),
        detail: e.to_string(),
    })
}

pub(crate) fn cmd_err(what: &'static str) -> impl Fn(xshell::Error) -> ImagesError {
    move |e| ImagesError::Command {
        cmd: what.to_string(),
        detail: e.to_string(),
    }
}

pub(crate) fn last_lines(stderr: &[u8], stdout: &[u8]) -> String {
    let s = String::from_utf8_lossy(if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    });
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    if tail.is_empty() {
        "no output".into()
    } else {
        tail.join("; ")
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), ImagesError> {
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    crate::cache::write_atomic(path, text.as_bytes())
}

/// The kernel line (major, minor) of a `linux-source-X.Y` package name;
/// `None` for anything else (the `linux-source` metapackage included).
pub(crate) fn linux_source_line(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.strip_prefix("linux-source-")?.split_once('.')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((num(major)?, num(minor)?))
}

/// `linux-image-<digit>...-amd64`, without -cloud-, -rt-, -dbg, -unsigned.
pub(crate) fn is_kernel_image_name(n: &str) -> bool {
    let Some(rest) = n.strip_prefix("linux-image-") else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit())
        && rest.ends_with("-amd64")
        && !rest.contains("-cloud-")
        && !rest.contains("-rt-")
        && !rest.contains("-dbg")
        && !rest.contains("-unsigned")
}

/// `linux-binary-*` / `linux-modules-*` entries of a Depends field, with
/// their `(= version)` when given.
fn split_deps(depends: &str) -> Vec<(String, Option<String>)> {
    depends
        .split(',')
        .flat_map(|alt| alt.split('|').next())
        .filter_map(|d| {
            let d = d.trim();
            let (name, ver) = match d.split_once('(') {
                Some((n, v)) => (
                    n.trim(),
                    v.trim_end_matches(')')
                        .trim()
                        .strip_prefix('=')
                        .map(|v| v.trim().to_string()),
                ),
                None => (d, None),
            };
            let name = name.split(':').next().unwrap_or(name);
            (name.starts_with("linux-binary-") || name.starts_with("linux-modules-"))
                .then(|| (name.to_string(), ver))
        })
        .collect()
}

fn deb_from_record(r: &BTreeMap<String, String>) -> Option<DebPackage> {
    Some(DebPackage {
        name: r.get("Package")?.clone(),
        version: r.get("Version")?.clone(),
        sha256: r.get("SHA256")?.clone(),
        size: r.get("Size")?.parse().ok()?,
    })
}

/// Build the kernel list from `apt-cache show` records of the image
/// packages and of their linux-binary/linux-modules dependencies.
pub(crate) fn kernels_from_records(
    images: &[BTreeMap<String, String>],
    deps: &[BTreeMap<String, String>],
) -> Vec<DebianKernel> {
    let dep_index: BTreeMap<(String, String), DebPackage> = deps
        .iter()
        .filter_map(deb_from_record)
        .map(|d| ((d.name.clone(), d.version.clone()), d))
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    'rec: for r in images {
        if r.get("Architecture").is_some_and(|a| a != "amd64") {
            continue;
        }
        let Some(image) = deb_from_record(r) else {
            continue;
        };
        if !is_kernel_image_name(&image.name) {
            continue;
        }
        let Some(version) = KernelVersion::parse(upstream(&image.version)) else {
            continue;
        };
        if !seen.insert((image.name.clone(), image.version.clone())) {
            continue;
        }
        let mut packages = Vec::new();
        for (name, ver) in split_deps(r.get("Depends").map(String::as_str).unwrap_or("")) {
            let ver = ver.unwrap_or_else(|| image.version.clone());
            match dep_index.get(&(name, ver)) {
                Some(d) => packages.push(d.clone()),
                None => continue 'rec,
            }
        }
        if packages.is_empty() {
            packages.push(image.clone());
        }
        out.push(DebianKernel {
            version,
            debian_version: image.version.clone(),
            image_package: image,
            packages,
        });
    }
    out.sort_by(|a, b| {
        a.version
            .cmp(&b.version)
            .then_with(|| compare_debian_versions(&a.debian_version, &b.debian_version))
            .then_with(|| a.image_package.name.cmp(&b.image_package.name))
    });
    out
}

/// The newest kernel matching `req`, or the nearest available versions.
pub(crate) fn select_kernel<'a>(
    kernels: &'a [DebianKernel],
    req: &VersionReq,
) -> Result<&'a DebianKernel, Vec<String>> {
    // `kernels` is sorted ascending, so the last match is the newest
    if let Some(k) = kernels.iter().rev().find(|k| req.matches(&k.version)) {
        return Ok(k);
    }
    let versions: Vec<KernelVersion> = kernels
        .iter()
        .map(|k| k.version)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let anchor = req.anchor();
    let pos = versions.partition_point(|v| *v < anchor);
    let lo = pos.saturating_sub(3);
    let hi = (pos + 3).min(versions.len());
    Err(versions[lo..hi].iter().map(|v| v.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_uri() {
        let text = "Types: deb\n# http://snapshot.example/archive/debian/2025\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            archive_uri_from_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            archive_uri_from_deb822(text, "bookworm-security").as_deref(),
            Some("http://mirror.example/debian-security")
        );
        assert_eq!(archive_uri_from_deb822(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a.example/debian/\nSuites: trixie\n\nTypes: deb-src deb\nURIs: http://b.example/debian/\nSuites: trixie\n";
        assert_eq!(
            archive_uri_from_deb822(disabled, "trixie").as_deref(),
            Some("http://b.example/debian")
        );
        let src_only = "Types: deb-src\nURIs: http://a.example/debian\nSuites: trixie\n";
        assert_eq!(archive_uri_from_deb822(src_only, "trixie"), None);
    }

    #[test]
    fn one_line_uri() {
        let text = "# comment\ndeb-src http://src.example/debian bookworm main\ndeb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian/ bookworm main contrib\ndeb http://sec.example/debian-security bookworm-security main\n";
        assert_eq!(
            archive_uri_from_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            archive_uri_from_one_line(text, "bookworm-security").as_deref(),
            Some("http://sec.example/debian-security")
        );
        assert_eq!(archive_uri_from_one_line(text, "sid"), None);
        assert_eq!(
            archive_uri_from_one_line(
                "deb https://cloud.example/apt cloud-sdk-bookworm main",
                "bookworm"
            ),
            None
        );
    }

    #[test]
    fn system_uri_from_etc_dir() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("sources.list.d")).unwrap();
        let suite = machine_suite();
        fs::write(
            t.path().join("sources.list"),
            format!("deb http://one-line.example/debian {suite} main\n"),
        )
        .unwrap();
        assert_eq!(
            system_archive_uri(t.path()).unwrap(),
            "http://one-line.example/debian"
        );
        fs::write(
            t.path().join("sources.list.d/debian.sources"),
            format!("Types: deb\nURIs: http://deb822.example/debian\nSuites: {suite}\nComponents: main\n"),
        )
        .unwrap();
        fs::write(
            t.path().join("sources.list.d/other.sources.disabled"),
            format!("Types: deb\nURIs: http://nope.example/debian\nSuites: {suite}\n"),
        )
        .unwrap();
        assert_eq!(
            system_archive_uri(t.path()).unwrap(),
            "http://deb822.example/debian"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = system_archive_uri(empty.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "cannot find a debian archive in the apt sources: no deb entry for suite"
            ),
            "{e}"
        );
    }

    #[test]
    fn linux_source_names() {
        assert_eq!(linux_source_line("linux-source-7.2"), Some((7, 2)));
        assert_eq!(linux_source_line("linux-source-6.12"), Some((6, 12)));
        assert_eq!(linux_source_line("linux-source"), None);
        assert_eq!(linux_source_line("linux-source-7"), None);
        assert_eq!(linux_source_line("linux-source-7.2.13"), None);
        assert_eq!(linux_source_line("linux-source-7.x"), None);
    }

    #[test]
    fn names() {
        assert!(is_kernel_image_name("linux-image-7.2.13+deb14-amd64"));
        assert!(is_kernel_image_name("linux-image-6.1.0-47-amd64"));
        assert!(!is_kernel_image_name("linux-image-amd64"));
        assert!(!is_kernel_image_name("linux-image-6.1.0-47-cloud-amd64"));
        assert!(!is_kernel_image_name("linux-image-6.1.0-47-rt-amd64"));
        assert!(!is_kernel_image_name("linux-image-6.1.0-47-amd64-dbg"));
        assert!(!is_kernel_image_name("linux-image-6.1.0-47-amd64-unsigned"));
    }

    fn rec(fields: &[(&str, &str)]) -> BTreeMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn image(name: &str, ver: &str, depends: &str) -> BTreeMap<String, String> {
        rec(&[
            ("Package", name),
            ("Version", ver),
            ("Architecture", "amd64"),
            ("Depends", depends),
            ("SHA256", &format!("sha-{name}-{ver}")),
            ("Size", "100"),
        ])
    }

    fn sample() -> Vec<DebianKernel> {
        let split = |rel: &str, ver: &str| {
            image(
                &format!("linux-image-{rel}-amd64"),
                ver,
                &format!("dracut | initramfs-tools (>= 0.120+deb8u2), linux-base-{rel}-amd64 (= {ver}), linux-binary-{rel}-amd64 (= {ver}), linux-modules-{rel}-amd64 (= {ver})"),
            )
        };
        let images = vec![
            split("7.2.13+deb14", "7.2.13-1"),
            split("7.2.9+deb13", "7.2.9-1~bpo13+1"),
            split("7.2.12+deb13", "7.2.12-1~bpo13+1"),
            split("7.1.13+deb13", "7.1.13-1~bpo13+1"),
            image(
                "linux-image-6.12.94+deb12-amd64",
                "6.12.94-1~bpo12+1",
                "kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool",
            ),
            image("linux-image-6.12.94+deb13-amd64", "6.12.94-1", "kmod"),
            image("linux-image-6.12.107+deb13-amd64", "6.12.107-1", "kmod"),
            image(
                "linux-image-6.1.0-47-amd64",
                "6.1.170-3",
                "kmod, linux-base (>= 4.3~)",
            ),
            image(
                "linux-image-6.1.0-47-amd64",
                "6.1.170-3",
                "kmod, linux-base (>= 4.3~)",
            ),
            image(
                "linux-image-6.16.12+deb13-amd64",
                "6.16.12-1~bpo13+1",
                "kmod",
            ),
        ];
        let mut deps = Vec::new();
        for (rel, ver) in [
            ("7.2.13+deb14", "7.2.13-1"),
            ("7.2.9+deb13", "7.2.9-1~bpo13+1"),
            ("7.2.12+deb13", "7.2.12-1~bpo13+1"),
            ("7.1.13+deb13", "7.1.13-1~bpo13+1"),
        ] {
            for kind in ["binary", "modules"] {
                deps.push(image(&format!("linux-{kind}-{rel}-amd64"), ver, "kmod"));
            }
        }
        kernels_from_records(&images, &deps)
    }

    fn req(s: &str) -> VersionReq {
        match s.parse::<crate::KernelSpec>().unwrap() {
            crate::KernelSpec::Debian(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn builds_sorted_kernel_list() {
        let ks = sample();
        let v: Vec<String> = ks
            .iter()
            .map(|k| format!("{} {}", k.version, k.debian_version))
            .collect();
        assert_eq!(
            v,
            [
                "6.1.170 6.1.170-3",
                "6.12.94 6.12.94-1~bpo12+1",
                "6.12.94 6.12.94-1",
                "6.12.107 6.12.107-1",
                "6.16.12 6.16.12-1~bpo13+1",
                "7.1.13 7.1.13-1~bpo13+1",
                "7.2.9 7.2.9-1~bpo13+1",
                "7.2.12 7.2.12-1~bpo13+1",
                "7.2.13 7.2.13-1",
            ]
        );
        let k = ks.last().unwrap();
        let names: Vec<&str> = k.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-binary-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64"
            ]
        );
        let old = &ks[0];
        assert_eq!(old.packages, vec![old.image_package.clone()]);
        assert_ne!(ks[1].key(), ks[2].key());
    }

    #[test]
    fn selects_newest_patch_exact_and_major() {
        let ks = sample();
        let sel = |s: &str| select_kernel(&ks, &req(s)).map(|k| k.image_package.name.clone());
        assert_eq!(sel("debian:7.2").unwrap(), "linux-image-7.2.13+deb14-amd64");
        assert_eq!(sel("debian:7").unwrap(), "linux-image-7.2.13+deb14-amd64");
        assert_eq!(sel("debian:7.1").unwrap(), "linux-image-7.1.13+deb13-amd64");
        assert_eq!(
            sel("debian:6.12.107").unwrap(),
            "linux-image-6.12.107+deb13-amd64"
        );
        // newest Debian revision of the same upstream version
        assert_eq!(
            sel("debian:6.12.94").unwrap(),
            "linux-image-6.12.94+deb13-amd64"
        );
        assert_eq!(sel("debian:6.1").unwrap(), "linux-image-6.1.0-47-amd64");
    }

    #[test]
    fn unknown_version_lists_nearest() {
        let ks = sample();
        let near = select_kernel(&ks, &req("debian:6.12.100")).unwrap_err();
        assert_eq!(
            near,
            ["6.1.170", "6.12.94", "6.12.107", "6.16.12", "7.1.13"]
        );
        let near = select_kernel(&ks, &req("debian:7.9")).unwrap_err();
        assert_eq!(near, ["7.2.9", "7.2.12", "7.2.13"]);
        let near = select_kernel(&ks, &req("debian:5.10")).unwrap_err();
        assert_eq!(near, ["6.1.170", "6.12.94", "6.12.107"]);
        let e = crate::ImagesError::UnknownKernelVersion {
            spec: "debian:7.9".into(),
            nearest: near,
        };
        assert_eq!(
            e.to_string(),
            "no debian kernel matches debian:7.9; nearest available: 6.1.170, 6.12.94, 6.12.107"
        );
    }

    #[test]
    fn deps_parse() {
        let d = split_deps("dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)");
        assert_eq!(
            d,
            vec![
                (
                    "linux-binary-7.2.13+deb14-amd64".to_string(),
                    Some("7.2.13-1".to_string())
                ),
                (
                    "linux-modules-7.2.13+deb14-amd64".to_string(),
                    Some("7.2.13-1".to_string())
                ),
            ]
        );
    }
}
