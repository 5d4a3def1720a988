//! The agent's L2 role (kernel command line `testbed_l2=1`): inside a real
//! L2 Linux started by `nested.rs`. The NIC drivers are loaded by then
//! (modules.order); this sets each NIC's combined queues, brings the links
//! up (IPv6 off first, and no addresses: nothing but the frames sent here
//! crosses the hub), reports ready on /dev/ttyS1 and runs commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use wire::{L2Command, L2Irq, L2Message, L2Nic};

use crate::say;
use crate::serial::Port;

const PORT: &str = "/dev/ttyS1";
const ETH_P_IP: u16 = 0x0800;
const MAGIC: &[u8] = b"irqbypass-testbed-l2";
/// Frames on the wire not yet received before the sender waits.
const IN_FLIGHT: u64 = 16;

pub fn main(queues: u32) -> ! {
    for f in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1\n");
    }
    let mut port = loop {
        match Port::open(PORT) {
            Ok(p) => break p,
            Err(e) => {
                say!("L2: open {PORT}: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let msg = match bring_up(queues) {
        Ok(nics) => L2Message::Ready {
            uptime_ms: uptime_ms(),
            nics,
            interrupts: read_irqs(),
        },
        Err(message) => L2Message::Failed { message },
    };
    send(&mut port, &msg);
    loop {
        let line = match port.read_line() {
            Ok(l) => l,
            Err(e) => {
                say!("L2: reading {PORT}: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let cmd: L2Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                send(
                    &mut port,
                    &L2Message::Failed {
                        message: format!("bad command {line:?}: {e}"),
                    },
                );
                continue;
            }
        };
        match cmd {
            L2Command::Traffic { from, to, frames } => {
                let msg = traffic(&from, &to, frames)
                    .unwrap_or_else(|message| L2Message::Failed { message });
                send(&mut port, &msg);
            }
            L2Command::Link { bdf, up, link_irqs } => {
                let msg = crate::l2link::await_link(&bdf, up, link_irqs)
                    .unwrap_or_else(|message| L2Message::Failed { message });
                send(&mut port, &msg);
            }
            L2Command::BringUp { bdf, queues } => {
                let msg = match bring_up_one(&bdf, queues) {
                    Ok(nic) => L2Message::Ready {
                        uptime_ms: uptime_ms(),
                        nics: vec![nic],
                        interrupts: read_irqs(),
                    },
                    Err(message) => L2Message::Failed { message },
                };
                send(&mut port, &msg);
            }
            L2Command::Counts => {
                let mut interrupts = read_irqs();
                add_apic_vectors(&mut interrupts);
                send(&mut port, &L2Message::Counts { interrupts });
            }
            L2Command::Poweroff => {
                // The L2 boots with acpi=off (ACPI costs it about 2 s of its
                // boot under nested TCG), so it cannot power off: it resets,
                // and its QEMU, run with -no-reboot, exits on the reset.
                // SAFETY: plain syscalls.
                unsafe {
                    libc::sync();
                    libc::reboot(libc::RB_AUTOBOOT);
                }
                std::process::exit(0);
            }
        }
    }
}

fn send(port: &mut Port, msg: &L2Message) {
    match serde_json::to_string(msg) {
        Ok(s) => {
            if let Err(e) = port.send_line(&s) {
                say!("L2: writing {PORT}: {e}");
            }
        }
        Err(e) => say!("L2: {e}"),
    }
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Every network interface with a PCI device: set queues, bring it up,
/// wait for carrier.
fn bring_up(queues: u32) -> Result<Vec<L2Nic>, String> {
    let mut nics = Vec::new();
    let dir = std::fs::read_dir("/sys/class/net").map_err(|e| format!("/sys/class/net: {e}"))?;
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let sock = Socket::control()?;
    for ifname in names {
        let base = Path::new("/sys/class/net").join(&ifname);
        let Some(bdf) = pci_bdf_of(&base) else {
            continue;
        };
        let driver = std::fs::read_link(base.join("device/driver"))
            .ok()
            .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let got = set_channels(&sock, &ifname, queues)?;
        set_up(&sock, &ifname)?;
        nics.push(L2Nic {
            bdf,
            ifname,
            driver,
            queues: got,
            carrier: false,
        });
    }
    if nics.is_empty() {
        return Err("no network interface with a PCI device in L2 (did the driver bind?)".into());
    }
    let t0 = Instant::now();
    loop {
        for n in nics.iter_mut() {
            n.carrier = read(Path::new("/sys/class/net").join(&n.ifname).join("carrier"))
                .as_deref()
                == Some("1");
        }
        if nics.iter().all(|n| n.carrier) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let down: Vec<&str> = nics
                .iter()
                .filter(|n| !n.carrier)
                .map(|n| n.ifname.as_str())
                .collect();
            return Err(format!("no carrier on {} after 20 s", down.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(nics)
}

/// The PCI address behind a network interface (`/sys/class/net/<if>`):
/// its device, or for a virtio NIC the PCI function its virtio device
/// sits on (`.../0000:00:10.0/virtio0`).
fn pci_bdf_of(base: &Path) -> Option<String> {
    let dev = std::fs::canonicalize(base.join("device")).ok()?;
    let name = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
    let own = name(&dev)?;
    if own.starts_with("virtio") {
        dev.parent().and_then(name)
    } else {
        Some(own)
    }
}

/// A NIC hot-plugged at `bdf`: wait for its driver's interface, set its
/// queues, bring it up, wait for carrier.
fn bring_up_one(bdf: &str, queues: u32) -> Result<L2Nic, String> {
    let t0 = Instant::now();
    let ifname = loop {
        match ifname_of(bdf) {
            Ok(i) => break i,
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                return Err(format!("after 60 s: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let driver = std::fs::read_link(
        Path::new("/sys/class/net")
            .join(&ifname)
            .join("device/driver"),
    )
    .ok()
    .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
    .unwrap_or_default();
    let sock = Socket::control()?;
    let got = set_channels(&sock, &ifname, queues)?;
    set_up(&sock, &ifname)?;
    let t0 = Instant::now();
    while read(Path::new("/sys/class/net").join(&ifname).join("carrier")).as_deref() != Some("1") {
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!("no carrier on {ifname} after 20 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(L2Nic {
        bdf: bdf.to_string(),
        ifname,
        driver,
        queues: got,
        carrier: true,
    })
}

struct Socket(libc::c_int);

impl Socket {
    fn new(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> Result<Socket, String> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(crate::sys::last_err("socket"));
        }
        Ok(Socket(fd))
    }

    /// A socket for interface ioctls (SIOCETHTOOL, SIOC[GS]IFFLAGS):
    /// AF_INET, or a packet socket on a kernel without INET (the testbed's
    /// built kernels); both hand these to dev_ioctl.
    fn control() -> Result<Socket, String> {
        Socket::new(libc::AF_INET, libc::SOCK_DGRAM, 0)
            .or_else(|_| Socket::new(libc::AF_PACKET, libc::SOCK_DGRAM, 0))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(ifname: &str) -> libc::ifreq {
    // SAFETY: all-zero is a valid ifreq.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

/// ETHTOOL_GCHANNELS / ETHTOOL_SCHANNELS: `queues` combined channels (at
/// most what the driver offers); returns the count in effect (1 where the
/// driver has no channel control).
fn set_channels(sock: &Socket, ifname: &str, queues: u32) -> Result<u32, String> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const ETHTOOL_SCHANNELS: u32 = 0x3d;
    // struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined,
    // rx_count, tx_count, other_count, combined_count
    let mut ch = [0u32; 9];
    let ioctl = |ch: &mut [u32; 9]| -> std::io::Result<()> {
        let mut r = ifreq(ifname);
        r.ifr_ifru.ifru_data = ch.as_mut_ptr().cast();
        // SAFETY: SIOCETHTOOL with a pointer to a struct ethtool_channels we own.
        if unsafe { libc::ioctl(sock.0, libc::SIOCETHTOOL, &mut r) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let call = |ch: &mut [u32; 9], what: &str| -> Result<(), String> {
        ioctl(ch).map_err(|e| format!("{ifname}: {what}: {e}"))
    };
    ch[0] = ETHTOOL_GCHANNELS;
    match ioctl(&mut ch) {
        Ok(()) => {}
        // a driver without channel control (e1000e: one receive and one
        // transmit queue, a vector each) has what it has
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(1),
        Err(e) => return Err(format!("{ifname}: ETHTOOL_GCHANNELS: {e}")),
    }
    let want = queues.min(ch[4]).max(1);
    if ch[8] != want {
        ch[0] = ETHTOOL_SCHANNELS;
        ch[8] = want;
        call(&mut ch, &format!("ETHTOOL_SCHANNELS combined={want}"))?;
    }
    Ok(want)
}

fn set_up(sock: &Socket, ifname: &str) -> Result<(), String> {
    let mut r = ifreq(ifname);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS on an ifreq we own.
    unsafe {
        if libc::ioctl(sock.0, libc::SIOCGIFFLAGS, &mut r) < 0 {
            return Err(crate::sys::last_err(&format!("{ifname}: SIOCGIFFLAGS")));
        }
        r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.0, libc::SIOCSIFFLAGS, &r) < 0 {
            return Err(crate::sys::last_err(&format!("{ifname}: SIOCSIFFLAGS up")));
        }
    }
    Ok(())
}

/// The MSI-X lines of L2's /proc/interrupts (per-device MSI domains:
/// chip `PCI-MSIX-<bdf>`, hwirq = table index).
pub fn read_irqs() -> Vec<L2Irq> {
    parse_irqs(&std::fs::read_to_string("/proc/interrupts").unwrap_or_default())
}

pub fn parse_irqs(text: &str) -> Vec<L2Irq> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .map(|h| {
            h.split_whitespace()
                .filter(|t| t.starts_with("CPU"))
                .count()
        })
        .unwrap_or(0);
    let mut out = Vec::new();
    for line in lines {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.len() < ncpu + 4 || !toks[0].ends_with(':') {
            continue;
        }
        let chip = toks[ncpu + 1];
        let Some(bdf) = chip.rsplit_once("MSIX-").map(|(_, b)| b) else {
            continue;
        };
        let Some(index) = toks[ncpu + 2]
            .strip_suffix("-edge")
            .and_then(|i| i.parse().ok())
        else {
            continue;
        };
        let count = toks[1..=ncpu]
            .iter()
            .filter_map(|c| c.parse::<u64>().ok())
            .sum();
        out.push(L2Irq {
            bdf: bdf.to_string(),
            index,
            name: toks[ncpu + 3..].join(" "),
            count,
            apic_vector: None,
        });
    }
    out
}

pub(crate) fn ifname_of(bdf: &str) -> Result<String, String> {
    let pci = Path::new("/sys/bus/pci/devices").join(bdf);
    let mut dir = pci.join("net");
    if !dir.exists() {
        // a virtio NIC: the interface is under the function's virtio device
        if let Some(v) = std::fs::read_dir(&pci).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("virtio"))
        }) {
            dir = pci.join(v).join("net");
        }
    }
    std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e} (no network interface on {bdf})", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| format!("no network interface on {bdf}"))
}

fn mac(ifname: &str) -> Result<[u8; 6], String> {
    let s = read(format!("/sys/class/net/{ifname}/address"))
        .ok_or_else(|| format!("{ifname}: no address"))?;
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(s.split(':')) {
        *d = u8::from_str_radix(p, 16).map_err(|e| format!("{ifname} address {s}: {e}"))?;
    }
    Ok(m)
}

fn ifindex(ifname: &str) -> Result<i32, String> {
    read(format!("/sys/class/net/{ifname}/ifindex"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{ifname}: no ifindex"))
}

fn packet_socket(ifname: &str, proto: u16) -> Result<Socket, String> {
    let s = Socket::new(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be()))?;
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto.to_be();
    sa.sll_ifindex = ifindex(ifname)?;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            s.0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(crate::sys::last_err(&format!(
            "bind packet socket to {ifname}"
        )));
    }
    Ok(s)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Frame `i`: IPv4/UDP from 10.1.x.y (one source per frame, so RSS spreads
/// them) to 10.2.0.1, port 9 (discard); nobody in L2 has these addresses.
pub fn frame(dst: [u8; 6], src: [u8; 6], i: u32) -> Vec<u8> {
    let payload: Vec<u8> = [MAGIC, &i.to_be_bytes()].concat();
    let udp_len = 8 + payload.len() as u16;
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len as usize);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 1; // ttl
    ip[9] = 17; // udp
    ip[12..16].copy_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
    ip[16..20].copy_from_slice(&[10, 2, 0, 1]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(&payload);
    f
}

/// Receive whatever is queued on `rx` without blocking; count our frames.
fn drain(rx: &Socket, buf: &mut [u8]) -> u64 {
    let mut n = 0;
    loop {
        // SAFETY: recv into our buffer.
        let r = unsafe { libc::recv(rx.0, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if r <= 0 {
            return n;
        }
        let f = &buf[..r as usize];
        if f.len() > 42 && f[42..].starts_with(MAGIC) {
            n += 1;
        }
    }
}

fn traffic(from: &str, to: &str, frames: u32) -> Result<L2Message, String> {
    let (from_if, to_if) = (ifname_of(from)?, ifname_of(to)?);
    // a device that loops frames back (vdpa_sim_net) sends to itself:
    // broadcast, which its receive filter takes whatever MAC it has
    let (src, dst) = if from == to {
        (mac(&from_if)?, [0xff; 6])
    } else {
        (mac(&from_if)?, mac(&to_if)?)
    };
    let rx = packet_socket(&to_if, ETH_P_IP)?;
    let tx = packet_socket(&from_if, 0)?;
    let mut buf = vec![0u8; 2048];
    drain(&rx, &mut buf);
    let (mut sent, mut received) = (0u64, 0u64);
    let t0 = Instant::now();
    let mut last_progress = Instant::now();
    while received < u64::from(frames) {
        if sent < u64::from(frames) && sent < received + IN_FLIGHT {
            let f = frame(dst, src, sent as u32);
            // SAFETY: send from our buffer.
            let r = unsafe { libc::send(tx.0, f.as_ptr().cast(), f.len(), 0) };
            if r < 0 {
                return Err(crate::sys::last_err(&format!("send on {from_if}")));
            }
            sent += 1;
            continue;
        }
        let got = drain(&rx, &mut buf);
        if got > 0 {
            received += got;
            last_progress = Instant::now();
            continue;
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            break; // lost frames: reported, judged by the host
        }
        let mut p = libc::pollfd {
            fd: rx.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
    }
    say!(
        "L2: {sent} frames {from_if} -> {to_if}, {received} received in {} ms",
        t0.elapsed().as_millis()
    );
    // the L1 agent reads the counts around the step once they settle
    // (runner/l2cut.rs)
    Ok(L2Message::Traffic { sent, received })
}

/// Each MSI-X line's APIC vector, from its device's MSI-X table (where
/// it can be read: the function's config space and BAR through sysfs).
pub fn add_apic_vectors(irqs: &mut [L2Irq]) {
    let mut tables: BTreeMap<String, Option<Vec<u32>>> = BTreeMap::new();
    for irq in irqs.iter_mut() {
        let data = tables
            .entry(irq.bdf.clone())
            .or_insert_with(|| match msix_data(&irq.bdf) {
                Ok(d) => Some(d),
                Err(e) => {
                    say!("L2: {}: MSI-X table not read: {e}", irq.bdf);
                    None
                }
            });
        irq.apic_vector = data
            .as_ref()
            .and_then(|d| d.get(irq.index as usize))
            .map(|d| (d & 0xff) as u8);
    }
}

/// Where a function's MSI-X table is: (BAR, offset, entries), from its
/// config space (PCI 3.0 6.8.2: capability 0x11; message control's table
/// size minus one in bits 0..=10; table offset and BIR).
pub fn msix_table(config: &[u8]) -> Option<(usize, usize, usize)> {
    let r16 = |o: usize| {
        config
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let r32 = |o: usize| {
        config
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if r16(6)? & 0x10 == 0 {
        return None; // no capability list
    }
    let mut ptr = usize::from(*config.get(0x34)? & 0xfc);
    for _ in 0..48 {
        if ptr == 0 {
            return None;
        }
        if *config.get(ptr)? == 0x11 {
            let entries = usize::from(r16(ptr + 2)? & 0x7ff) + 1;
            let t = r32(ptr + 4)?;
            return Some(((t & 7) as usize, (t & !7) as usize, entries));
        }
        ptr = usize::from(*config.get(ptr + 1)? & 0xfc);
    }
    None
}

/// The message data of every MSI-X table entry of `bdf`.
fn msix_data(bdf: &str) -> Result<Vec<u32>, String> {
    let dir = Path::new("/sys/bus/pci/devices").join(bdf);
    let config = std::fs::read(dir.join("config")).map_err(|e| format!("config: {e}"))?;
    let (bar, offset, entries) = msix_table(&config).ok_or("no MSI-X capability")?;
    let path = dir.join(format!("resource{bar}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let start = offset & !0xfff;
    let len = (offset - start + 16 * entries).next_multiple_of(4096);
    // SAFETY: a shared read-only mapping of the BAR's pages, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::unix::io::AsRawFd::as_raw_fd(&file),
            start as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(crate::sys::last_err(&format!("mmap {}", path.display())));
    }
    let base = p.cast::<u8>();
    let data = (0..entries)
        .map(|i| {
            // SAFETY: inside the mapping; MMIO, read as one aligned u32.
            unsafe { std::ptr::read_volatile(base.add(offset - start + 16 * i + 8).cast::<u32>()) }
        })
        .collect();
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len) };
    Ok(data)
}

/// Per (bdf, index) delta between two readings.
pub fn deltas(before: &[L2Irq], after: &[L2Irq]) -> BTreeMap<(String, u32), (String, u64)> {
    let mut out = BTreeMap::new();
    for a in after {
        let b = before
            .iter()
            .find(|b| b.bdf == a.bdf && b.index == a.index)
            .map(|b| b.count)
            .unwrap_or(0);
        out.insert(
            (a.bdf.clone(), a.index),
            (a.name.clone(), a.count.saturating_sub(b)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_lines_of_proc_interrupts() {
        let text = "           CPU0       CPU1\n  0:         10          0   IO-APIC   2-edge      timer\n 24:          3          1  PCI-MSIX-0000:00:10.0    0-edge      eth0\n 25:         12          0  PCI-MSIX-0000:00:10.0    1-edge      eth0-TxRx-0\nNMI:          0          0   Non-maskable interrupts\n";
        let irqs = parse_irqs(text);
        assert_eq!(
            irqs,
            vec![
                L2Irq {
                    bdf: "0000:00:10.0".into(),
                    index: 0,
                    name: "eth0".into(),
                    count: 4,
                    apic_vector: None,
                },
                L2Irq {
                    bdf: "0000:00:10.0".into(),
                    index: 1,
                    name: "eth0-TxRx-0".into(),
                    count: 12,
                    apic_vector: None,
                },
            ]
        );
    }

    #[test]
    fn the_msix_table_is_found_through_the_capability_list() {
        let mut c = vec![0u8; 256];
        c[6] = 0x10; // status: capability list
        c[0x34] = 0x40;
        c[0x40] = 0x09; // vendor-specific, next 0x98
        c[0x41] = 0x98;
        c[0x98] = 0x11; // MSI-X, 4 entries, table in BAR 1 at 0x2000
        c[0x9a] = 3;
        c[0x9c..0xa0].copy_from_slice(&0x2001u32.to_le_bytes());
        assert_eq!(msix_table(&c), Some((1, 0x2000, 4)));
        c[6] = 0;
        assert_eq!(msix_table(&c), None);
    }

    #[test]
    fn frames_have_a_valid_ip_header() {
        let f = frame([2; 6], [4; 6], 300);
        assert_eq!(&f[12..14], &[8, 0]);
        assert_eq!(checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(&f[26..30], &[10, 1, 1, 44]);
        assert!(f[42..].starts_with(MAGIC));
    }
}
