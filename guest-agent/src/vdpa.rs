//! vDPA through vhost-vdpa: create a vDPA device on its management device
//! (generic netlink), open the vhost-vdpa character device the vhost_vdpa
//! driver gives it, map the agent's ring memory through the IOTLB, set up
//! split virtqueues, and make them signal by posting buffers.
//!
//! Kernel interfaces: include/uapi/linux/vdpa.h (netlink), vhost.h and
//! vhost_types.h (ioctls, IOTLB messages), drivers/vhost/vdpa.c; the ring
//! layout is the virtio split virtqueue (virtio spec 2.7).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};
use wire::{Mgmtdev, VdpaSpec, VqFire};

use crate::genl::{Genl, Request};
use crate::sys::{errstr, last_err, write_attr};
use crate::vfio::{current_driver, dev_dir};

const VHOST_VIRTIO: u32 = 0xaf;

#[repr(C)]
#[derive(Default)]
struct VringState {
    index: u32,
    num: u32,
}

#[repr(C)]
#[derive(Default)]
struct VringFile {
    index: u32,
    fd: i32,
}

#[repr(C)]
#[derive(Default)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc: u64,
    used: u64,
    avail: u64,
    log: u64,
}

ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST_VIRTIO, 0x00, u64);
ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST_VIRTIO, 0x00, u64);
ioctl_io_nr!(VHOST_SET_OWNER, VHOST_VIRTIO, 0x01);
ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST_VIRTIO, 0x10, VringState);
ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST_VIRTIO, 0x11, VringAddr);
ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST_VIRTIO, 0x12, VringState);
ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST_VIRTIO, 0x20, VringFile);
ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST_VIRTIO, 0x21, VringFile);
ioctl_iow_nr!(VHOST_SET_BACKEND_FEATURES, VHOST_VIRTIO, 0x25, u64);
ioctl_ior_nr!(VHOST_GET_BACKEND_FEATURES, VHOST_VIRTIO, 0x26, u64);
ioctl_ior_nr!(VHOST_VDPA_GET_STATUS, VHOST_VIRTIO, 0x71, u8);
ioctl_iow_nr!(VHOST_VDPA_SET_STATUS, VHOST_VIRTIO, 0x72, u8);
ioctl_iow_nr!(VHOST_VDPA_SET_VRING_ENABLE, VHOST_VIRTIO, 0x75, VringState);
ioctl_ior_nr!(VHOST_VDPA_GET_VRING_NUM, VHOST_VIRTIO, 0x76, u16);

const VHOST_BACKEND_F_IOTLB_MSG_V2: u64 = 1 << 0x1;
const VHOST_IOTLB_MSG_V2: u32 = 0x2;
const VHOST_IOTLB_UPDATE: u8 = 2;
const VHOST_ACCESS_RW: u8 = 0x3;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
const STATUS_FAILED: u8 = 0x80;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device's DMA goes through the platform's translation: vhost-vdpa's
/// IOTLB (vdpa_sim's own, or the IOMMU domain for vp_vdpa).
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

const VRING_DESC_F_WRITE: u16 = 2;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

// vdpa generic netlink (include/uapi/linux/vdpa.h)
const VDPA_GENL_NAME: &str = "vdpa";
const VDPA_GENL_VERSION: u8 = 1;
const VDPA_CMD_DEV_NEW: u8 = 3;
const VDPA_CMD_DEV_DEL: u8 = 4;
const VDPA_ATTR_MGMTDEV_BUS_NAME: u16 = 1;
const VDPA_ATTR_MGMTDEV_DEV_NAME: u16 = 2;
const VDPA_ATTR_DEV_NAME: u16 = 4;

/// Ring entries per virtqueue (QEMU's virtio-net default; vdpa_sim's maximum).
const QUEUE_SIZE: u16 = 256;
/// Each virtqueue's share of the ring memory: descriptors (16 bytes each)
/// at 0, the available ring at 4 KiB, the used ring at 8 KiB, the one
/// buffer at 12 KiB.
const VQ_STRIDE: usize = 16 * 1024;
const AVAIL_OFF: usize = 4096;
const USED_OFF: usize = 8192;
const BUF_OFF: usize = 12288;
const BUF_LEN: u32 = 4096;
/// The device address of the ring memory: low, so that it is inside any
/// IOMMU aperture, and clear of the MSI window at 0xfee00000.
const IOVA_BASE: u64 = 0x1000_0000;
/// virtio_net_hdr_v1 (12 bytes, all zero: no offloads) + a 60-byte
/// broadcast Ethernet frame, which vdpa_sim_net's receive filter accepts.
const FRAME_LEN: u32 = 12 + 60;

/// How long a device may take to complete a posted buffer.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long vhost_vdpa may take to bind a new vDPA device and its node to appear.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// Page-aligned memory holding every ring and buffer: a shared mapping of
/// a memfd, because a parent that works on virtual addresses (vdpa_sim's
/// default `use_va`) only maps file-backed shared memory
/// (vhost_vdpa_va_map skips anonymous mappings without an error), while
/// pinning for an IOMMU domain (vp_vdpa) works on it too.
struct RingMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl RingMemory {
    fn new(len: usize) -> Result<RingMemory, String> {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"testbed-vdpa-rings".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_err("memfd_create"));
        }
        // SAFETY: memfd_create returned a new fd that we now own.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|e| errstr("ftruncate ring memory", &e))?;
        // SAFETY: a fresh shared mapping of our memfd; checked below. The
        // mapping keeps the memory alive after the fd is closed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_err("mmap ring memory"));
        }
        let ptr = NonNull::new(p.cast()).ok_or("mmap returned NULL")?;
        Ok(RingMemory { ptr, len })
    }

    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Volatile accesses: the device reads and writes this memory.
    fn write16(&self, off: usize, v: u16) {
        assert!(off + 2 <= self.len);
        // SAFETY: in bounds, aligned by the layout, memory we own.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off).cast::<u16>(), v.to_le()) }
    }

    fn read16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len);
        // SAFETY: as for write16.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(off).cast::<u16>()) })
    }

    fn write_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        // SAFETY: in bounds, memory we own.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len())
        }
    }

    /// Descriptor `i` of the queue at `base`: address, length, flags, next.
    fn write_desc(&self, base: usize, i: u16, addr: u64, len: u32, flags: u16) {
        let off = base + 16 * usize::from(i);
        self.write_bytes(off, &addr.to_le_bytes());
        self.write_bytes(off + 8, &len.to_le_bytes());
        self.write16(off + 12, flags);
        self.write16(off + 14, 0);
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Per virtqueue: buffers posted and buffers seen completed.
struct Vq {
    kick: EventFd,
    /// The available ring's index: buffers posted so far.
    posted: Cell<u16>,
}

/// An open vhost-vdpa device. Dropping closes the character device
/// (vhost-vdpa resets the device and unregisters its producers), deletes
/// the vDPA device and gives a PCI function back to its first driver.
pub struct VdpaDevice {
    /// The vDPA device's name (the scenario's device name).
    pub name: String,
    /// The PCI function under the vDPA device, for its IRQ lines' names.
    pub bdf: Option<String>,
    spec: &'static VdpaSpec,
    fd: Option<File>,
    vqs: Vec<Vq>,
    mem: RingMemory,
    /// The vDPA device exists (netlink) and must be deleted.
    created: bool,
    /// The PCI function was taken from this driver (None: it had none).
    pci_taken: Option<(String, Option<String>)>,
    /// Status bits set so far.
    status: u8,
    /// Entries per virtqueue.
    num: u16,
}

/// The name /proc/interrupts gives vp_vdpa's vector for queue `qid`.
/// vp_vdpa formats it as `vp-vdpa[<bdf>]-<qid>\n`: the newline ends up
/// after the name, which whitespace splitting drops.
pub fn vp_vdpa_irq_name(bdf: &str, qid: u32) -> String {
    format!("vp-vdpa[{bdf}]-{qid}")
}

fn is_loaded(module: &str) -> bool {
    Path::new("/sys/module").join(module).exists()
}

/// Bind a PCI function to `driver` through driver_override (as for
/// vfio-pci); returns the driver it had.
fn bind_pci(bdf: &str, driver: &str) -> Result<Option<String>, String> {
    let dir = dev_dir(bdf);
    if !dir.exists() {
        return Err(format!("{bdf}: no such PCI device"));
    }
    let had = current_driver(bdf);
    if had.as_deref() == Some(driver) {
        return Ok(None);
    }
    write_attr(dir.join("driver_override"), driver)
        .map_err(|e| errstr(&format!("{bdf}: driver_override"), &e))?;
    if let Some(drv) = &had {
        write_attr(dir.join("driver/unbind"), bdf)
            .map_err(|e| errstr(&format!("{bdf}: unbind from {drv}"), &e))?;
    }
    write_attr("/sys/bus/pci/drivers_probe", bdf)
        .map_err(|e| errstr(&format!("{bdf}: drivers_probe"), &e))?;
    if current_driver(bdf).as_deref() != Some(driver) {
        return Err(format!(
            "{bdf}: {driver} did not bind after drivers_probe (driver: {})",
            current_driver(bdf).unwrap_or_else(|| "none".into())
        ));
    }
    Ok(had)
}

/// Undo [`bind_pci`]: unbind, clear driver_override, and let the first
/// driver probe it again.
fn restore_pci(bdf: &str, had: Option<&str>) -> Result<(), String> {
    let dir = dev_dir(bdf);
    if current_driver(bdf).is_some() {
        write_attr(dir.join("driver/unbind"), bdf)
            .map_err(|e| errstr(&format!("{bdf}: unbind"), &e))?;
    }
    write_attr(dir.join("driver_override"), "\n")
        .map_err(|e| errstr(&format!("{bdf}: clear driver_override"), &e))?;
    if let Some(drv) = had {
        write_attr("/sys/bus/pci/drivers_probe", bdf)
            .map_err(|e| errstr(&format!("{bdf}: drivers_probe"), &e))?;
        if current_driver(bdf).as_deref() != Some(drv) {
            return Err(format!("{bdf}: {drv} did not bind again"));
        }
    }
    Ok(())
}

/// The vhost-vdpa node vhost_vdpa made for vDPA device `name`.
fn vhost_node(name: &str) -> Result<PathBuf, String> {
    let dir = Path::new("/sys/bus/vdpa/devices").join(name);
    let t0 = Instant::now();
    loop {
        let driver = std::fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let node = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("vhost-vdpa-"))
        });
        if let Some(node) = node {
            let dev = Path::new("/dev").join(node);
            if dev.exists() {
                return Ok(dev);
            }
        }
        if t0.elapsed() > NODE_TIMEOUT {
            return Err(format!(
                "vDPA device {name}: no /dev/vhost-vdpa-N after {NODE_TIMEOUT:?} (driver: {})",
                driver.unwrap_or_else(|| "none".into())
            ));
        }
        sleep(Duration::from_millis(10));
    }
}

/// Create vDPA device `name` on the management device `mgmt` (on `bus`,
/// e.g. `pci`, for a PCI management device).
fn create(name: &str, bus: Option<&str>, mgmt: &str) -> Result<(), String> {
    let mut nl = Genl::open()?;
    let family = nl.family(VDPA_GENL_NAME)?;
    let mut req = Request::new(family, VDPA_CMD_DEV_NEW, VDPA_GENL_VERSION);
    if let Some(bus) = bus {
        req = req.string(VDPA_ATTR_MGMTDEV_BUS_NAME, bus);
    }
    req = req
        .string(VDPA_ATTR_MGMTDEV_DEV_NAME, mgmt)
        .string(VDPA_ATTR_DEV_NAME, name);
    let what = match bus {
        Some(b) => format!("VDPA_CMD_DEV_NEW {name} on {b}/{mgmt}"),
        None => format!("VDPA_CMD_DEV_NEW {name} on {mgmt}"),
    };
    nl.command(&what, req)
}

/// Delete vDPA device `name`; a failure is only said.
fn delete(name: &str) {
    let del = Genl::open().and_then(|mut nl| {
        let family = nl.family(VDPA_GENL_NAME)?;
        let req = Request::new(family, VDPA_CMD_DEV_DEL, VDPA_GENL_VERSION)
            .string(VDPA_ATTR_DEV_NAME, name);
        nl.command(&format!("VDPA_CMD_DEV_DEL {name}"), req)
    });
    if let Err(e) = del {
        crate::say!("{name}: {e}");
    }
}

/// The modules of `spec` that are not loaded, as the error a scenario gets.
fn check_modules(spec: &VdpaSpec) -> Result<(), String> {
    let missing: Vec<&str> = spec
        .modules
        .iter()
        .copied()
        .filter(|m| !is_loaded(m))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "module {} not loaded: this kernel has no such vDPA support (Debian's kernels lack vdpa_sim and vp_vdpa; use a kernel the testbed builds, --kernel git:...)",
        missing.join(", ")
    ))
}

/// A vDPA device bound to vhost_vdpa that the agent does not open: a VMM
/// in L1 (the L2's QEMU, `-netdev type=vhost-vdpa`) opens its node.
/// Dropping deletes the vDPA device, so drop it only after the VMM is gone.
pub struct VhostNode {
    pub name: String,
    /// `/dev/vhost-vdpa-N`.
    pub node: PathBuf,
}

impl VhostNode {
    /// Create vDPA device `name` on a named management device
    /// (`vdpasim_net`) and wait for its vhost-vdpa node.
    pub fn create(name: &str, spec: &'static VdpaSpec) -> Result<VhostNode, String> {
        check_modules(spec)?;
        let Mgmtdev::Named(mgmt) = spec.mgmtdev else {
            return Err(format!(
                "{name}: only a vDPA device on a named management device (vdpasim_net) can be given to an L2"
            ));
        };
        create(name, None, mgmt)?;
        match vhost_node(name) {
            Ok(node) => Ok(VhostNode {
                name: name.to_string(),
                node,
            }),
            Err(e) => {
                delete(name);
                Err(e)
            }
        }
    }
}

impl Drop for VhostNode {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

impl VdpaDevice {
    /// Create the vDPA device `name` (on PCI function `bdf` for a PCI
    /// management device), open it through vhost-vdpa and set up every
    /// virtqueue of `spec` up to FEATURES_OK (no call eventfds).
    pub fn open(name: &str, bdf: &str, spec: &'static VdpaSpec) -> Result<VdpaDevice, String> {
        check_modules(spec)?;
        let len = VQ_STRIDE * spec.vqs.len();
        let mut dev = VdpaDevice {
            name: name.to_string(),
            bdf: None,
            spec,
            fd: None,
            vqs: Vec::new(),
            mem: RingMemory::new(len)?,
            created: false,
            pci_taken: None,
            status: 0,
            num: 0,
        };
        let (bus, mgmt) = match spec.mgmtdev {
            Mgmtdev::Named(n) => (None, n.to_string()),
            Mgmtdev::Pci { driver } => {
                if bdf.is_empty() {
                    return Err(format!("{name}: no PCI address for its management device"));
                }
                let had = bind_pci(bdf, driver)?;
                dev.pci_taken = Some((bdf.to_string(), had));
                dev.bdf = Some(bdf.to_string());
                (Some("pci"), bdf.to_string())
            }
        };
        create(name, bus, &mgmt)?;
        dev.created = true;
        let node = vhost_node(name)?;
        dev.fd = Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&node)
                .map_err(|e| errstr(&format!("open {}", node.display()), &e))?,
        );
        dev.setup()?;
        Ok(dev)
    }

    fn fd(&self) -> &File {
        self.fd.as_ref().expect("open until drop")
    }

    fn set_status(&mut self, add: u8) -> Result<(), String> {
        let status = self.status | add;
        // SAFETY: the kernel reads one u8 we own.
        if unsafe { ioctl_with_ref(self.fd(), VHOST_VDPA_SET_STATUS(), &status) } < 0 {
            return Err(last_err(&format!("VHOST_VDPA_SET_STATUS({status:#x})")));
        }
        let mut got = 0u8;
        // SAFETY: the kernel writes one u8 we own.
        if unsafe { ioctl_with_mut_ref(self.fd(), VHOST_VDPA_GET_STATUS(), &mut got) } < 0 {
            return Err(last_err("VHOST_VDPA_GET_STATUS"));
        }
        if got & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0 || got & status != status {
            return Err(format!(
                "status {status:#x} did not stick: the device reads {got:#x}"
            ));
        }
        self.status = status;
        Ok(())
    }

    fn vring_state(&self, what: &str, req: u64, index: u32, num: u32) -> Result<(), String> {
        let s = VringState { index, num };
        // SAFETY: the kernel reads a vhost_vring_state we own.
        if unsafe { ioctl_with_ref(self.fd(), req, &s) } < 0 {
            return Err(last_err(&format!("{what}(vq{index})")));
        }
        Ok(())
    }

    fn vring_file(&self, what: &str, req: u64, index: u32, fd: i32) -> Result<(), String> {
        let f = VringFile { index, fd };
        // SAFETY: the kernel reads a vhost_vring_file we own.
        if unsafe { ioctl_with_ref(self.fd(), req, &f) } < 0 {
            return Err(last_err(&format!("{what}(vq{index})")));
        }
        Ok(())
    }

    /// Owner, backend and device features, IOTLB, virtqueues; FEATURES_OK.
    fn setup(&mut self) -> Result<(), String> {
        // SAFETY: no-argument ioctl on our fd.
        if unsafe { ioctl(self.fd(), VHOST_SET_OWNER()) } < 0 {
            return Err(last_err("VHOST_SET_OWNER"));
        }
        let mut backend = 0u64;
        // SAFETY: the kernel writes one u64 we own.
        if unsafe { ioctl_with_mut_ref(self.fd(), VHOST_GET_BACKEND_FEATURES(), &mut backend) } < 0
        {
            return Err(last_err("VHOST_GET_BACKEND_FEATURES"));
        }
        if backend & VHOST_BACKEND_F_IOTLB_MSG_V2 == 0 {
            return Err(format!(
                "vhost-vdpa offers no IOTLB_MSG_V2 (backend features {backend:#x})"
            ));
        }
        let want = VHOST_BACKEND_F_IOTLB_MSG_V2;
        // SAFETY: the kernel reads one u64 we own.
        if unsafe { ioctl_with_ref(self.fd(), VHOST_SET_BACKEND_FEATURES(), &want) } < 0 {
            return Err(last_err("VHOST_SET_BACKEND_FEATURES"));
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER)?;
        let mut offered = 0u64;
        // SAFETY: the kernel writes one u64 we own.
        if unsafe { ioctl_with_mut_ref(self.fd(), VHOST_GET_FEATURES(), &mut offered) } < 0 {
            return Err(last_err("VHOST_GET_FEATURES"));
        }
        // no device-specific features: a plain split-ring device is all a
        // queue needs to complete buffers
        let features = VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM;
        if offered & features != features {
            return Err(format!(
                "the device does not offer VERSION_1 and ACCESS_PLATFORM (features {offered:#x})"
            ));
        }
        // SAFETY: the kernel reads one u64 we own.
        if unsafe { ioctl_with_ref(self.fd(), VHOST_SET_FEATURES(), &features) } < 0 {
            return Err(last_err("VHOST_SET_FEATURES"));
        }
        self.set_status(STATUS_FEATURES_OK)?;
        self.map_rings()?;
        let mut max = 0u16;
        // SAFETY: the kernel writes one u16 we own.
        if unsafe { ioctl_with_mut_ref(self.fd(), VHOST_VDPA_GET_VRING_NUM(), &mut max) } < 0 {
            return Err(last_err("VHOST_VDPA_GET_VRING_NUM"));
        }
        let num = QUEUE_SIZE.min(max);
        if num == 0 {
            return Err("the device's virtqueues have no entries".into());
        }
        self.num = num;
        for i in 0..self.spec.vqs.len() as u32 {
            let base = VQ_STRIDE * i as usize;
            let iova = IOVA_BASE + base as u64;
            self.vring_state("VHOST_SET_VRING_NUM", VHOST_SET_VRING_NUM(), i, num.into())?;
            let addr = VringAddr {
                index: i,
                desc: iova,
                avail: iova + AVAIL_OFF as u64,
                used: iova + USED_OFF as u64,
                ..Default::default()
            };
            // SAFETY: the kernel reads a vhost_vring_addr we own.
            if unsafe { ioctl_with_ref(self.fd(), VHOST_SET_VRING_ADDR(), &addr) } < 0 {
                return Err(last_err(&format!("VHOST_SET_VRING_ADDR(vq{i})")));
            }
            self.vring_state("VHOST_SET_VRING_BASE", VHOST_SET_VRING_BASE(), i, 0)?;
            let kick = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| errstr("eventfd", &e))?;
            self.vring_file(
                "VHOST_SET_VRING_KICK",
                VHOST_SET_VRING_KICK(),
                i,
                kick.as_raw_fd(),
            )?;
            self.vring_state(
                "VHOST_VDPA_SET_VRING_ENABLE",
                VHOST_VDPA_SET_VRING_ENABLE(),
                i,
                1,
            )?;
            self.vqs.push(Vq {
                kick,
                posted: Cell::new(0),
            });
        }
        Ok(())
    }

    /// One VHOST_IOTLB_UPDATE (struct vhost_msg_v2) mapping the ring
    /// memory at IOVA_BASE, read-write.
    fn map_rings(&self) -> Result<(), String> {
        let mut msg = [0u8; 72];
        msg[0..4].copy_from_slice(&VHOST_IOTLB_MSG_V2.to_ne_bytes());
        // asid (4..8) 0; struct vhost_iotlb_msg from 8
        msg[8..16].copy_from_slice(&IOVA_BASE.to_ne_bytes());
        msg[16..24].copy_from_slice(&(self.mem.len as u64).to_ne_bytes());
        msg[24..32].copy_from_slice(&self.mem.addr().to_ne_bytes());
        msg[32] = VHOST_ACCESS_RW;
        msg[33] = VHOST_IOTLB_UPDATE;
        // a message is one write(2) on the vhost-vdpa fd
        let mut fd = self.fd();
        let n = fd
            .write(&msg)
            .map_err(|e| errstr("VHOST_IOTLB_UPDATE", &e))?;
        if n != msg.len() {
            return Err(format!(
                "VHOST_IOTLB_UPDATE: wrote {n} of {} bytes",
                msg.len()
            ));
        }
        Ok(())
    }

    /// Call eventfds for `wired` queues (fds in the same order), then
    /// DRIVER_OK: where the parent has per-queue IRQs, vhost-vdpa registers
    /// the producers now.
    pub fn enable(&mut self, wired: &[(u32, i32)]) -> Result<(), String> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return Err(format!(
                "{}: virtqueue interrupts already enabled",
                self.name
            ));
        }
        for (q, fd) in wired {
            if *q as usize >= self.vqs.len() {
                return Err(format!("{}: no virtqueue {q}", self.name));
            }
            self.vring_file("VHOST_SET_VRING_CALL", VHOST_SET_VRING_CALL(), *q, *fd)?;
        }
        self.set_status(STATUS_DRIVER_OK)
    }

    fn base(q: u32) -> usize {
        VQ_STRIDE * q as usize
    }

    /// Post one buffer on queue `q` (descriptor 0, reused: each is
    /// completed before the next is posted), device-writable for a receive
    /// buffer; `quiet` suppresses the queue's interrupt.
    fn post(&self, q: u32, device_writes: bool, quiet: bool) {
        let base = Self::base(q);
        let buf = IOVA_BASE + (base + BUF_OFF) as u64;
        if device_writes {
            self.mem
                .write_desc(base, 0, buf, BUF_LEN, VRING_DESC_F_WRITE);
        } else {
            let mut frame = [0u8; FRAME_LEN as usize];
            // destination ff:ff:ff:ff:ff:ff after the 12-byte virtio-net header
            frame[12..18].fill(0xff);
            self.mem.write_bytes(base + BUF_OFF, &frame);
            self.mem.write_desc(base, 0, buf, FRAME_LEN, 0);
        }
        self.mem.write16(
            base + AVAIL_OFF,
            if quiet { VRING_AVAIL_F_NO_INTERRUPT } else { 0 },
        );
        let vq = &self.vqs[q as usize];
        let idx = vq.posted.get();
        let size = usize::from(self.num);
        // avail ring: flags, idx, ring[size]
        self.mem
            .write16(base + AVAIL_OFF + 4 + 2 * (usize::from(idx) % size), 0);
        // descriptor and ring entry before the index the device polls
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        vq.posted.set(idx.wrapping_add(1));
        self.mem.write16(base + AVAIL_OFF + 2, idx.wrapping_add(1));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn kick(&self, q: u32) -> Result<(), String> {
        self.vqs[q as usize]
            .kick
            .write(1)
            .map_err(|e| errstr(&format!("kick vq{q}"), &e))
    }

    /// Make queue `q` signal once, as the model says.
    pub fn fire(&self, q: u32) -> Result<(), String> {
        match self.spec.vqs.get(q as usize) {
            Some(VqFire::Tx) => {
                self.post(q, false, false);
                self.kick(q)
            }
            Some(VqFire::RxLoopback { tx }) => {
                self.post(q, true, false);
                self.post(*tx, false, true);
                self.kick(*tx)
            }
            Some(VqFire::Cannot(why)) => Err(format!("vq{q} cannot fire: {why}")),
            None => Err(format!("{}: no virtqueue {q}", self.name)),
        }
    }

    /// Wait until the device completed every buffer posted on the queues
    /// `fire(q)` used: the used ring's index caught up with the available one.
    pub fn wait_completed(&self, q: u32) -> Result<(), String> {
        let mut queues = vec![q];
        if let Some(VqFire::RxLoopback { tx }) = self.spec.vqs.get(q as usize) {
            queues.push(*tx);
        }
        let t0 = Instant::now();
        for q in queues {
            let base = Self::base(q);
            let want = self.vqs[q as usize].posted.get();
            loop {
                // used ring: flags, idx, ring[size]
                let used = self.mem.read16(base + USED_OFF + 2);
                if used == want {
                    break;
                }
                if t0.elapsed() > COMPLETE_TIMEOUT {
                    return Err(format!(
                        "{}: vq{q}: the device completed {used} of {want} buffers within {COMPLETE_TIMEOUT:?}",
                        self.name
                    ));
                }
                sleep(Duration::from_micros(100));
            }
        }
        Ok(())
    }

    /// The /proc/interrupts action name of queue `q`'s host IRQ, where the
    /// parent has per-queue IRQs.
    pub fn irq_name(&self, q: u32) -> Option<String> {
        match self.spec.mgmtdev {
            Mgmtdev::Pci { driver: "vp-vdpa" } => {
                self.bdf.as_deref().map(|b| vp_vdpa_irq_name(b, q))
            }
            _ => None,
        }
    }
}

impl Drop for VdpaDevice {
    fn drop(&mut self) {
        // closing resets the device: producers unregister, IRQs are freed
        drop(self.fd.take());
        if self.created {
            delete(&self.name);
        }
        if let Some((bdf, had)) = self.pci_taken.take() {
            if let Err(e) = restore_pci(&bdf, had.as_deref()) {
                crate::say!("{}: {e}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // _IOW(0xaf, 0x72, __u8) and _IOW(0xaf, 0x11, struct vhost_vring_addr)
        assert_eq!(VHOST_VDPA_SET_STATUS(), 0x4001_af72);
        assert_eq!(VHOST_SET_VRING_ADDR(), 0x4028_af11);
        assert_eq!(VHOST_VDPA_GET_VRING_NUM(), 0x8002_af76);
        assert_eq!(VHOST_SET_VRING_CALL(), 0x4008_af21);
        assert_eq!(VHOST_SET_OWNER(), 0xaf01);
    }

    #[test]
    fn ring_layout_fits_its_stride() {
        let size = usize::from(QUEUE_SIZE);
        assert!(16 * size <= AVAIL_OFF);
        assert!(AVAIL_OFF + 6 + 2 * size <= USED_OFF);
        assert!(USED_OFF + 6 + 8 * size <= BUF_OFF);
        assert!(BUF_OFF + BUF_LEN as usize <= VQ_STRIDE);
        assert_eq!(
            vp_vdpa_irq_name("0000:00:05.0", 1),
            "vp-vdpa[0000:00:05.0]-1"
        );
    }

    #[test]
    fn posting_writes_a_descriptor_and_advances_the_index() {
        let spec: &'static VdpaSpec = wire::DeviceModel::VdpaSimNet.vdpa().unwrap();
        let mem = RingMemory::new(VQ_STRIDE * 2).unwrap();
        let dev = VdpaDevice {
            name: "t".into(),
            bdf: None,
            spec,
            fd: None,
            vqs: (0..2)
                .map(|_| Vq {
                    kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                    posted: Cell::new(0),
                })
                .collect(),
            mem,
            created: false,
            pci_taken: None,
            status: 0,
            num: QUEUE_SIZE,
        };
        dev.post(0, true, false);
        dev.post(1, false, true);
        let rx = 0;
        let tx = VQ_STRIDE;
        assert_eq!(dev.mem.read16(rx + 12), VRING_DESC_F_WRITE);
        assert_eq!(dev.mem.read16(rx + AVAIL_OFF), 0);
        assert_eq!(dev.mem.read16(rx + AVAIL_OFF + 2), 1);
        assert_eq!(dev.mem.read16(tx + 12), 0);
        assert_eq!(dev.mem.read16(tx + AVAIL_OFF), VRING_AVAIL_F_NO_INTERRUPT);
        assert_eq!(dev.mem.read16(tx + AVAIL_OFF + 2), 1);
        assert_eq!(
            dev.mem.read16(tx + BUF_OFF + 12),
            0xffff,
            "broadcast destination"
        );
        assert!(
            dev.wait_completed(1).is_err(),
            "nothing completes without a device"
        );
    }
}
