//! Booting a kernel without its self-decompression.
//!
//! A bzImage carries the kernel compressed and decompresses itself at boot.
//! Under TCG that is most of the boot: a Debian 7.2 bzImage (xz) took about
//! 3 s of a 5.7 s boot to the agent. QEMU can instead load the uncompressed
//! ELF `vmlinux` and enter it through its PVH entry point (the Xen ELF note
//! XEN_ELFNOTE_PHYS32_ENTRY, present when the kernel has CONFIG_PVH). This
//! module extracts that ELF from a bzImage once and caches it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::{write_atomic, Cache};
use crate::{ImagesError, IoContext, Kernel, Progress};

/// XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The uncompressed, PVH-bootable ELF of `kernel`, extracted from its
/// bzImage and cached by the bzImage's content; `None` when the kernel
/// cannot boot that way (no PVH note, or a compression we do not read), in
/// which case the bzImage boots as it is.
pub fn pvh_kernel(
    cache: &Cache,
    kernel: &Kernel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<PathBuf>, ImagesError> {
    let bzimage = std::fs::read(&kernel.bzimage).ctx("read", &kernel.bzimage)?;
    let key = hex(&Sha256::digest(&bzimage));
    let entry = cache.root().join("vmlinux").join(format!("{key}.elf"));
    let none_marker = entry.with_extension("none");
    if entry.exists() {
        progress(Progress::CacheHit {
            what: format!("pvh vmlinux {}", kernel.release),
        });
        return Ok(Some(entry));
    }
    if none_marker.exists() {
        return Ok(None);
    }
    let _lock = cache.lock(&format!("vmlinux-{key}"))?;
    if entry.exists() {
        return Ok(Some(entry));
    }
    progress(Progress::ExtractingVmlinux {
        release: kernel.release.clone(),
    });
    match extract(&kernel.bzimage, &bzimage)? {
        Some(elf) => {
            write_atomic(&entry, &elf)?;
            Ok(Some(entry))
        }
        None => {
            write_atomic(&none_marker, b"")?;
            Ok(None)
        }
    }
}

/// The ELF inside a bzImage if it can boot through PVH.
fn extract(path: &Path, bzimage: &[u8]) -> Result<Option<Vec<u8>>, ImagesError> {
    let bad = |why: String| ImagesError::BadBzImage {
        path: path.to_owned(),
        why,
    };
    let payload = payload(bzimage).map_err(bad)?;
    // The build appends the uncompressed size, little-endian, to the payload.
    let (stream, size) = payload.split_at(payload.len().saturating_sub(4));
    let size = u32::from_le_bytes(
        size.try_into()
            .map_err(|_| bad("payload too short".into()))?,
    ) as usize;
    let elf = match stream {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            let mut out = Vec::with_capacity(size);
            xz2::read::XzDecoder::new(stream)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("xz payload: {e}")))?;
            out
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => decompress_with("zstd", stream, path)?,
        [0x1f, 0x8b, ..] => decompress_with("gzip", stream, path)?,
        _ => return Ok(None),
    };
    if elf.len() != size {
        return Err(bad(format!(
            "payload decompressed to {} bytes, header says {size}",
            elf.len()
        )));
    }
    Ok(has_pvh_entry(&elf).then_some(elf))
}

/// The compressed payload, located by the boot protocol header (2.08+).
fn payload(bzimage: &[u8]) -> Result<&[u8], String> {
    let u16_at = |o: usize| {
        bzimage
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bzimage
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no boot protocol header (HdrS)".into());
    }
    let version = u16_at(0x206).unwrap_or(0);
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields"));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let offset = (setup_sects + 1) * 512 + u32_at(0x248).unwrap_or(0) as usize;
    let length = u32_at(0x24c).unwrap_or(0) as usize;
    bzimage
        .get(offset..offset + length)
        .ok_or_else(|| format!("payload {offset:#x}+{length:#x} past the end"))
}

fn decompress_with(tool: &str, stream: &[u8], path: &Path) -> Result<Vec<u8>, ImagesError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| ImagesError::Command {
            cmd: format!("{tool} -dc"),
            detail: e.to_string(),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = stream.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| ImagesError::Command {
        cmd: format!("{tool} -dc"),
        detail: e.to_string(),
    })?;
    let _ = writer.join();
    // Trailing bytes after the stream make some tools complain; the length
    // check against the size the build recorded is what counts.
    if output.stdout.is_empty() {
        return Err(ImagesError::BadBzImage {
            path: path.to_owned(),
            why: format!("{tool} could not read the payload"),
        });
    }
    Ok(output.stdout)
}

/// Whether the ELF has the Xen PVH entry note QEMU needs to boot it.
fn has_pvh_entry(elf: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let Ok(file) = ElfFile64::<object::Endianness>::parse(elf) else {
        return false;
    };
    let endian = file.endian();
    for header in file.elf_program_headers() {
        let Ok(Some(mut notes)) = header.notes(endian, elf) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
        }
    }
    false
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_needs_a_boot_header() {
        assert!(payload(&[0u8; 0x300]).unwrap_err().contains("HdrS"));
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x1f1] = 1; // setup is 1 + 1 sectors: payload region starts at 0x400
        image[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&0x20u32.to_le_bytes());
        assert_eq!(payload(&image).unwrap().len(), 0x20);
        image[0x24c..0x250].copy_from_slice(&0x10000u32.to_le_bytes());
        assert!(payload(&image).unwrap_err().contains("past the end"));
    }

    #[test]
    fn not_an_elf_has_no_pvh_entry() {
        assert!(!has_pvh_entry(b"not an elf at all"));
    }

    /// The real thing, when a Debian kernel is unpacked here.
    #[test]
    fn debian_bzimage_yields_a_pvh_elf() {
        let Some(bzimage) = std::fs::read_dir("/tmp/images-cache/kernels")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("bzImage"))
            .filter(|p| p.exists())
        else {
            eprintln!("skipped: no unpacked Debian kernel in /tmp/images-cache");
            return;
        };
        let bytes = std::fs::read(&bzimage).unwrap();
        let elf = extract(&bzimage, &bytes)
            .unwrap()
            .expect("Debian kernels have CONFIG_PVH");
        assert_eq!(&elf[..4], b"\x7fELF");
    }
}
