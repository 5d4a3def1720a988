//! A VMM for the L1 guest: a QEMU binary, its shared-library closure and
//! the firmware it boots an L2 with, as files for
//! [`crate::InitramfsSpec::files`].
//!
//! Libraries are found the way Debian's ld.so finds them (`DT_RUNPATH` or
//! `DT_RPATH` with `$ORIGIN`, then the multiarch and default directories),
//! following each library's own `DT_NEEDED`; the dynamic loader comes from
//! the binary's `PT_INTERP`. In the guest every library sits in
//! [`GUEST_LIB_DIR`] under its `DT_NEEDED` name, which ld.so searches
//! without a cache, and the loader at its `PT_INTERP` path.
//!
//! ```text
//! /opt/testbed/vmm/qemu-system-x86_64      the binary
//! /lib64/ld-linux-x86-64.so.2              its PT_INTERP
//! /lib/x86_64-linux-gnu/<DT_NEEDED name>   every library of the closure
//! /opt/testbed/vmm/firmware/<file>         bios-256k.bin, linuxboot_dma.bin, kvmvapic.bin, pvh.bin
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

use crate::{ImagesError, IoContext};

/// Where the VMM binary is in the guest.
pub const GUEST_VMM_BINARY: &str = "/opt/testbed/vmm/qemu-system-x86_64";
/// The guest's firmware directory for the VMM's `-L`.
pub const GUEST_FIRMWARE_DIR: &str = "/opt/testbed/vmm/firmware";
/// Where the libraries go in the guest: a directory ld.so searches by default.
pub const GUEST_LIB_DIR: &str = "/lib/x86_64-linux-gnu";
/// The firmware an x86 L2 needs: SeaBIOS, the `-kernel` option ROMs
/// (bzImage and PVH), the TPR-patching ROM of `pc` machines. NIC option
/// ROMs are not needed: devices get `romfile=`.
pub const VMM_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "linuxboot_dma.bin",
    "kvmvapic.bin",
    "pvh.bin",
];

/// Debian's ld.so search order after RUNPATH: /etc/ld.so.conf.d (libc,
/// multiarch), then the built-in defaults.
const DEFAULT_LIB_DIRS: &[&str] = &[
    "/usr/local/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
    "/lib",
    "/usr/lib",
];

/// What one ELF file says about its dynamic linking.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DynInfo {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    /// DT_RUNPATH, else DT_RPATH, split at `:`.
    pub runpath: Vec<String>,
}

/// Read PT_INTERP, DT_NEEDED and DT_RUNPATH/DT_RPATH of a 64-bit ELF.
pub fn dyn_info(path: &Path) -> Result<DynInfo, ImagesError> {
    use object::elf;
    use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader, SectionHeader};
    let bad = |why: String| ImagesError::BadElf {
        path: path.to_owned(),
        why,
    };
    let data = fs::read(path).ctx("read", path)?;
    let file = ElfFile64::<object::Endianness>::parse(&*data).map_err(|e| bad(e.to_string()))?;
    let endian = file.endian();
    let mut info = DynInfo::default();
    let mut rpath = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) == elf::PT_INTERP {
            let bytes = ph
                .data(endian, &*data)
                .map_err(|_| bad("PT_INTERP out of bounds".into()))?;
            let s = bytes.split(|b| *b == 0).next().unwrap_or_default();
            info.interp = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    let header = file.elf_header();
    let sections = header
        .sections(endian, &*data)
        .map_err(|e| bad(e.to_string()))?;
    for (index, section) in sections.iter().enumerate() {
        let Some((entries, _)) = section
            .dynamic(endian, &*data)
            .map_err(|e| bad(e.to_string()))?
        else {
            continue;
        };
        let strings = sections
            .strings(
                endian,
                &*data,
                object::SectionIndex(section.sh_link(endian) as usize),
            )
            .map_err(|e| bad(format!("dynamic section {index}: {e}")))?;
        for d in entries {
            let tag = d.tag32(endian);
            let text = || -> Result<String, ImagesError> {
                let s = d
                    .string(endian, strings)
                    .map_err(|e| bad(format!("dynamic string: {e}")))?;
                Ok(String::from_utf8_lossy(s).into_owned())
            };
            match tag {
                Some(elf::DT_NEEDED) => info.needed.push(text()?),
                Some(elf::DT_RUNPATH) => info.runpath.extend(text()?.split(':').map(str::to_owned)),
                Some(elf::DT_RPATH) => rpath.extend(text()?.split(':').map(str::to_owned)),
                _ => {}
            }
        }
    }
    if info.runpath.is_empty() {
        info.runpath = rpath;
    }
    Ok(info)
}

/// The host file ld.so would load for `name`, needed by `by`.
fn find_library(name: &str, by: &Path, runpath: &[String]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| p.is_file());
    }
    let origin = by.parent().unwrap_or(Path::new("/")).display().to_string();
    runpath
        .iter()
        .map(|d| d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
        .chain(DEFAULT_LIB_DIRS.iter().map(|d| d.to_string()))
        .map(|d| Path::new(&d).join(name))
        .find(|p| p.is_file())
}

/// The shared-library closure of `binary`: (guest path, host file) for
/// every library and the loader, in name order.
pub fn library_closure(binary: &Path) -> Result<Vec<(String, PathBuf)>, ImagesError> {
    let top = dyn_info(binary)?;
    let interp = top.interp.clone().ok_or_else(|| ImagesError::BadElf {
        path: binary.to_owned(),
        why: "no PT_INTERP: not a dynamically linked executable".into(),
    })?;
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    out.insert(interp.clone(), PathBuf::from(&interp));
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut queue: VecDeque<(String, PathBuf, Vec<String>)> = top
        .needed
        .iter()
        .map(|n| (n.clone(), binary.to_owned(), top.runpath.clone()))
        .collect();
    while let Some((name, by, runpath)) = queue.pop_front() {
        if seen.contains_key(&name) {
            continue;
        }
        let host =
            find_library(&name, &by, &runpath).ok_or_else(|| ImagesError::LibraryNotFound {
                name: name.clone(),
                needed_by: by.clone(),
            })?;
        let info = dyn_info(&host)?;
        for n in &info.needed {
            queue.push_back((n.clone(), host.clone(), info.runpath.clone()));
        }
        seen.insert(name.clone(), host.clone());
        let file_name = Path::new(&name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(name);
        out.entry(format!("{GUEST_LIB_DIR}/{file_name}"))
            .or_insert(host);
    }
    Ok(out.into_iter().collect())
}

/// The binary, its closure and [`VMM_FIRMWARE`] from the first of
/// `firmware_dirs` that has each file.
pub fn vmm_files(
    binary: &Path,
    firmware_dirs: &[PathBuf],
) -> Result<Vec<(String, PathBuf)>, ImagesError> {
    let mut files = vec![(GUEST_VMM_BINARY.to_owned(), binary.to_owned())];
    files.extend(library_closure(binary)?);
    let mut missing = Vec::new();
    for f in VMM_FIRMWARE {
        match firmware_dirs
            .iter()
            .map(|d| d.join(f))
            .find(|p| p.is_file())
        {
            Some(p) => files.push((format!("{GUEST_FIRMWARE_DIR}/{f}"), p)),
            None => missing.push(*f),
        }
    }
    if !missing.is_empty() {
        return Err(ImagesError::MissingFirmware {
            files: missing.join(", "),
            dirs: firmware_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real thing: this machine's QEMU (or any dynamic binary).
    #[test]
    fn closure_of_a_real_binary() {
        let bin = ["/usr/bin/qemu-system-x86_64", "/bin/ls"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file());
        let Some(bin) = bin else {
            eprintln!("skipped: no dynamic binary to look at");
            return;
        };
        let files = library_closure(bin).unwrap();
        assert!(
            files
                .iter()
                .any(|(g, _)| g == "/lib64/ld-linux-x86-64.so.2"),
            "{files:?}"
        );
        assert!(
            files
                .iter()
                .any(|(g, _)| g == "/lib/x86_64-linux-gnu/libc.so.6"),
            "{files:?}"
        );
        for (g, h) in &files {
            assert!(h.is_file(), "{g} <- {}", h.display());
        }
        // every DT_NEEDED of every library is in the closure
        for (_, h) in &files {
            for n in dyn_info(h).unwrap().needed {
                assert!(
                    files.iter().any(|(g, _)| g.ends_with(&format!("/{n}"))),
                    "{n} needed by {}",
                    h.display()
                );
            }
        }
    }

    #[test]
    fn not_an_elf_is_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        let e = library_closure(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("bad ELF file {}: ", p.display())),
            "{e}"
        );
    }
}
