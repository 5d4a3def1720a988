//! A minimal newc ("070701") cpio writer, plus a reader used by tests and
//! tools. Output is deterministic: inode numbers are assigned in write
//! order, mtimes/uids/gids are zero.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Writes newc entries to `W`. Names are given without a leading `/`.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad cpio entry name",
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry too large"))?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut hdr = String::with_capacity(HEADER_LEN);
        hdr.push_str(MAGIC);
        for f in fields {
            hdr.push_str(&format!("{f:08X}"));
        }
        debug_assert_eq!(hdr.len(), HEADER_LEN);
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// A parsed newc entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parse a newc archive up to its trailer (the trailer is not returned).
pub fn parse_newc(mut b: &[u8]) -> Result<Vec<CpioEntry>, String> {
    let total = b.len();
    let mut out = Vec::new();
    let align = |pos: usize| (4 - pos % 4) % 4;
    loop {
        let pos = total - b.len();
        if b.len() < HEADER_LEN || &b[..6] != MAGIC.as_bytes() {
            return Err(format!("bad header at {pos}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).map_err(|_| "bad field")?;
            u32::from_str_radix(s, 16).map_err(|_| format!("bad field {s:?} at {pos}"))
        };
        let (mode, uid, gid, mtime, size) = (
            field(1)?,
            field(2)?,
            field(3)?,
            field(5)?,
            field(6)? as usize,
        );
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = HEADER_LEN + namesize;
        if namesize == 0 || b.len() < name_end {
            return Err(format!("truncated name at {pos}"));
        }
        let name = std::str::from_utf8(&b[HEADER_LEN..name_end - 1])
            .map_err(|_| format!("bad name at {pos}"))?
            .to_string();
        let data_start = name_end + align(pos + name_end);
        let data_end = data_start + size;
        if b.len() < data_end {
            return Err(format!("truncated data of {name}"));
        }
        if name == TRAILER {
            return Ok(out);
        }
        out.push(CpioEntry {
            name,
            mode,
            uid,
            gid,
            mtime,
            rdev,
            data: b[data_start..data_end].to_vec(),
        });
        let next = data_end + align(pos + data_end);
        b = &b[next.min(b.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/a", 0o755, b"hello").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_aligned_and_parses_back() {
        let b = sample();
        assert_eq!(b.len() % 4, 0);
        assert_eq!(&b[..6], b"070701");
        // first header: ino 1, dir mode, nlink 2, namesize 4 ("bin\0")
        assert_eq!(&b[6..14], b"00000001");
        assert_eq!(&b[14..22], b"000041ED");
        assert_eq!(&b[38..46], b"00000002");
        assert_eq!(&b[94..102], b"00000004");
        assert_eq!(&b[110..114], b"bin\0");
        let e = parse_newc(&b).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/a",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "empty"
            ]
        );
        assert_eq!(e[1].data, b"hello");
        assert_eq!(e[1].mode, S_IFREG | 0o755);
        assert_eq!(e[2].data, b"busybox");
        assert_eq!(e[2].mode & 0o170000, S_IFLNK);
        assert_eq!(e[4].rdev, (5, 1));
        assert_eq!(e[4].mode, S_IFCHR | 0o600);
        assert!(e.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
        assert_eq!(sample(), b, "deterministic");
        let tail = String::from_utf8_lossy(&b[b.len() - 24..]).to_string();
        assert!(tail.contains("TRAILER!!!"));
    }

    #[test]
    fn busybox_lists_it() {
        let bb = std::path::Path::new("/bin/busybox");
        if !bb.exists() {
            println!("skipped: no /bin/busybox");
            return;
        }
        use std::process::{Command, Stdio};
        let mut c = Command::new(bb)
            .args(["cpio", "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            [
                "bin",
                "bin/a",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "empty"
            ]
        );
    }
}
