//! Reading what a kselftest install produced: `kselftest-list.txt`, whether
//! each listed test runs without a dynamic loader, and the build log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// `collection:test` lines of a `kselftest-list.txt` (the names the
/// install's `run_kselftest.sh -t` takes), in file order.
pub(crate) fn parse_kselftest_list(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .filter(|(c, t)| !c.is_empty() && !t.is_empty())
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect()
}

/// What kind of executable a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecKind {
    /// An ELF file without a PT_INTERP program header: runs with no loader.
    StaticElf,
    /// An ELF file that needs this dynamic loader.
    DynamicElf(String),
    /// A `#!` script.
    Script,
    /// Anything else (the reason).
    Other(String),
}

const PT_INTERP: u32 = 3;

/// Classify `path` by its first bytes and, for ELF, its program headers.
pub(crate) fn exec_kind(path: &Path) -> std::io::Result<ExecKind> {
    let mut f = File::open(path)?;
    let mut ident = [0u8; 64];
    let n = read_up_to(&mut f, &mut ident)?;
    let head = &ident[..n];
    if head.starts_with(b"#!") {
        return Ok(ExecKind::Script);
    }
    if !head.starts_with(b"\x7fELF") {
        return Ok(ExecKind::Other(
            "neither an ELF file nor a #! script".into(),
        ));
    }
    let bad = |why: &str| Ok(ExecKind::Other(format!("bad ELF file: {why}")));
    if n < 52 {
        return bad("truncated header");
    }
    let is64 = match head[4] {
        1 => false,
        2 => true,
        _ => return bad("unknown class"),
    };
    let le = match head[5] {
        1 => true,
        2 => false,
        _ => return bad("unknown byte order"),
    };
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        if le {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        if le {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    };
    let (phoff, phentsize, phnum) = if is64 {
        if n < 64 {
            return bad("truncated header");
        }
        (
            u64_at(head, 0x20),
            u16_at(head, 0x36) as usize,
            u16_at(head, 0x38) as usize,
        )
    } else {
        (
            u32_at(head, 0x1c) as u64,
            u16_at(head, 0x2a) as usize,
            u16_at(head, 0x2c) as usize,
        )
    };
    let min_entsize = if is64 { 56 } else { 32 };
    if phnum == 0 {
        return bad("no program headers");
    }
    if phentsize < min_entsize {
        return bad("program header entries too small");
    }
    let mut table = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))?;
    if read_up_to(&mut f, &mut table)? != table.len() {
        return bad("truncated program headers");
    }
    for ph in table.chunks_exact(phentsize) {
        if u32_at(ph, 0) != PT_INTERP {
            continue;
        }
        let (offset, size) = if is64 {
            (u64_at(ph, 8), u64_at(ph, 32))
        } else {
            (u32_at(ph, 4) as u64, u32_at(ph, 16) as u64)
        };
        let mut interp = vec![0u8; size.min(4096) as usize];
        f.seek(SeekFrom::Start(offset))?;
        let got = read_up_to(&mut f, &mut interp)?;
        interp.truncate(got);
        let end = interp.iter().position(|&b| b == 0).unwrap_or(interp.len());
        return Ok(ExecKind::DynamicElf(
            String::from_utf8_lossy(&interp[..end]).into_owned(),
        ));
    }
    Ok(ExecKind::StaticElf)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A compiler invocation in a kselftest build log (kselftest makefiles echo
/// the whole command): one source file compiled.
pub(crate) fn is_compile_line(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    let compiler = first.ends_with("gcc") || first.ends_with("clang") || first == "cc";
    compiler && line.contains(" -c ")
}

/// The first compiler or make error of a log excerpt, for a one-line reason.
pub(crate) fn first_error(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .find(|l| {
            l.contains(": error:")
                || l.contains("undefined reference to")
                || l.contains(": fatal error:")
        })
        .or_else(|| lines.iter().find(|l| l.contains("*** ")))
        .map(|l| l.trim().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// A minimal 64-bit little-endian ELF executable: one PT_LOAD, and a
    /// PT_INTERP naming `interp` when given.
    pub(crate) fn tiny_elf(interp: Option<&str>) -> Vec<u8> {
        let phnum: u16 = if interp.is_some() { 2 } else { 1 };
        let mut v = vec![0u8; 64];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // 64-bit
        v[5] = 1; // little endian
        v[6] = 1; // version
        v[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        v[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        v[0x18..0x20].copy_from_slice(&0x400078u64.to_le_bytes()); // entry
        v[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // phoff
        v[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        v[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        v[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let interp_off = 64 + 56 * phnum as u64;
        let mut ph = |p_type: u32, flags: u32, off: u64, size: u64| {
            let mut e = vec![0u8; 56];
            e[0..4].copy_from_slice(&p_type.to_le_bytes());
            e[4..8].copy_from_slice(&flags.to_le_bytes());
            e[8..16].copy_from_slice(&off.to_le_bytes());
            e[16..24].copy_from_slice(&(0x400000 + off).to_le_bytes());
            e[24..32].copy_from_slice(&(0x400000 + off).to_le_bytes());
            e[32..40].copy_from_slice(&size.to_le_bytes());
            e[40..48].copy_from_slice(&size.to_le_bytes());
            e[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            v.extend_from_slice(&e);
        };
        if let Some(i) = interp {
            ph(PT_INTERP, 4, interp_off, i.len() as u64 + 1);
        }
        ph(1, 5, 0, 0x100);
        if let Some(i) = interp {
            v.extend_from_slice(i.as_bytes());
            v.push(0);
        }
        // exit(0): mov $60,%eax; xor %edi,%edi; syscall
        v.extend_from_slice(&[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]);
        v
    }

    #[test]
    fn static_and_dynamic_elf_scripts_and_junk() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        fs::write(p("static"), tiny_elf(None)).unwrap();
        fs::write(p("dynamic"), tiny_elf(Some("/lib64/ld-linux-x86-64.so.2"))).unwrap();
        fs::write(p("script.sh"), "#!/bin/sh\nexit 4\n").unwrap();
        fs::write(p("text"), "timeout=120\n").unwrap();
        fs::write(p("short"), b"\x7fELF\x02\x01").unwrap();
        assert_eq!(exec_kind(&p("static")).unwrap(), ExecKind::StaticElf);
        assert_eq!(
            exec_kind(&p("dynamic")).unwrap(),
            ExecKind::DynamicElf("/lib64/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(exec_kind(&p("script.sh")).unwrap(), ExecKind::Script);
        assert!(matches!(exec_kind(&p("text")).unwrap(), ExecKind::Other(_)));
        assert_eq!(
            exec_kind(&p("short")).unwrap(),
            ExecKind::Other("bad ELF file: truncated header".into())
        );
        assert!(exec_kind(&p("absent")).is_err());
        // the system's own (dynamically linked) shell, when it is one
        if let Ok(ExecKind::DynamicElf(interp)) = exec_kind(Path::new("/bin/sh")) {
            assert!(interp.contains("ld-"), "{interp}");
        }
    }

    #[test]
    fn kselftest_list_lines() {
        let text = "kvm:demand_paging_test\nkvm:xapic_ipi_test\n\nkvm:nx_huge_pages_test.sh\nvfio:vfio_pci_device_test\nnot a test\n:x\n";
        let got = parse_kselftest_list(text);
        let want: Vec<(String, String)> = [
            ("kvm", "demand_paging_test"),
            ("kvm", "xapic_ipi_test"),
            ("kvm", "nx_huge_pages_test.sh"),
            ("vfio", "vfio_pci_device_test"),
        ]
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn log_lines() {
        assert!(is_compile_line(
            "gcc -D_GNU_SOURCE= -Wall -c lib/kvm_util.c -o /x/lib/kvm_util.o"
        ));
        assert!(is_compile_line("x86_64-linux-gnu-gcc -O2 -c a.c -o a.o"));
        assert!(!is_compile_line("gcc -static a.o b.o -o prog"));
        assert!(!is_compile_line("make[1]: Entering directory '/x -c y'"));
        let log = "gcc -c a.c -o a.o\nlib/vfio_pci_device.c:36:15: error: implicit declaration of function 'calloc_assert'\nmake[1]: *** [x] Error 1\n";
        assert_eq!(
            first_error(log).as_deref(),
            Some("lib/vfio_pci_device.c:36:15: error: implicit declaration of function 'calloc_assert'")
        );
        assert_eq!(
            first_error("make: *** No rule to make target 'x'.  Stop.\n").as_deref(),
            Some("make: *** No rule to make target 'x'.  Stop.")
        );
        assert_eq!(first_error("all good\n"), None);
    }
}
