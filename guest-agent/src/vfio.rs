//! VFIO: bind a PCI device to vfio-pci, open it through a container and
//! group (type1 or no-IOMMU), MSI eventfds, BAR0 access.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::*;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

use crate::sys::{errstr, last_err, write_attr};

ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE as u32, VFIO_BASE);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_FEATURE, VFIO_TYPE as u32, VFIO_BASE + 17);

const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

/// The device's directory in sysfs.
pub fn dev_dir(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

/// Current driver name of a PCI device.
pub fn current_driver(bdf: &str) -> Option<String> {
    std::fs::read_link(dev_dir(bdf).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// driver_override = vfio-pci, unbind from any other driver, drivers_probe.
pub fn bind_vfio_pci(bdf: &str) -> Result<(), String> {
    let dir = dev_dir(bdf);
    if !dir.exists() {
        return Err(format!("{bdf}: no such PCI device"));
    }
    if current_driver(bdf).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    write_attr(dir.join("driver_override"), "vfio-pci")
        .map_err(|e| errstr(&format!("{bdf}: driver_override"), &e))?;
    if let Some(drv) = current_driver(bdf) {
        write_attr(dir.join("driver/unbind"), bdf)
            .map_err(|e| errstr(&format!("{bdf}: unbind from {drv}"), &e))?;
    }
    write_attr("/sys/bus/pci/drivers_probe", bdf)
        .map_err(|e| errstr(&format!("{bdf}: drivers_probe"), &e))?;
    // probing is synchronous; allow a little slack anyway
    let t0 = Instant::now();
    while current_driver(bdf).as_deref() != Some("vfio-pci") {
        if t0.elapsed() > Duration::from_millis(200) {
            let mut why = String::new();
            if !dir.join("iommu_group").exists() {
                why = if Path::new("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode")
                    .exists()
                {
                    "; the device has no IOMMU group (no-IOMMU mode off? boot with vfio.enable_unsafe_noiommu_mode=1)"
                        .into()
                } else {
                    "; the device has no IOMMU group and this kernel's vfio has no no-IOMMU mode (CONFIG_VFIO_NOIOMMU unset)".into()
                };
            }
            return Err(format!(
                "{bdf}: vfio-pci did not bind after drivers_probe (driver: {}){why}",
                current_driver(bdf).unwrap_or_else(|| "none".into())
            ));
        }
        sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Unbind a device from vfio-pci and clear its driver_override, leaving it
/// driverless. The device must not be open: vfio-pci's remove would wait
/// for userspace to close it.
pub fn unbind_vfio_pci(bdf: &str) -> Result<(), String> {
    let dir = dev_dir(bdf);
    if !dir.exists() {
        return Err(format!("{bdf}: no such PCI device"));
    }
    match current_driver(bdf).as_deref() {
        Some("vfio-pci") => write_attr(dir.join("driver/unbind"), bdf)
            .map_err(|e| errstr(&format!("{bdf}: unbind from vfio-pci"), &e))?,
        Some(other) => return Err(format!("{bdf}: bound to {other}, not vfio-pci")),
        None => return Err(format!("{bdf}: not bound to any driver")),
    }
    write_attr(dir.join("driver_override"), "\n")
        .map_err(|e| errstr(&format!("{bdf}: clear driver_override"), &e))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Region {
    pub offset: u64,
    pub size: u64,
}

/// An open VFIO device. Dropping closes device, group, container in that
/// order (field declaration order).
pub struct VfioDevice {
    pub bdf: String,
    pub noiommu: bool,
    /// Signalled by vfio-pci when the kernel wants the device back (its
    /// remove is waiting for us to close it: hot-unplug, unbind).
    request: Option<vmm_sys_util::eventfd::EventFd>,
    device: File,
    // held open for the device's lifetime; closed after it
    #[allow(dead_code)]
    group: File,
    #[allow(dead_code)]
    container: File,
    pub config: Region,
    pub bar0: Region,
    /// For a virtual function the agent enabled: its PF, which disables
    /// SR-IOV and closes once the VF is closed (fields drop in order).
    pub pf: Option<Box<SriovPf>>,
}

/// A PF opened through vfio-pci with SR-IOV enabled for one VF.
pub struct SriovPf {
    pub bdf: String,
    pub dev: VfioDevice,
}

impl Drop for SriovPf {
    fn drop(&mut self) {
        let path = dev_dir(&self.bdf).join("sriov_numvfs");
        if let Err(e) = write_attr(&path, "0") {
            crate::say!("{}: disabling SR-IOV: {e}", self.bdf);
        }
    }
}

/// Enable one VF on a PF that is open through vfio-pci (vfio-pci loaded
/// with enable_sriov=1) and return the VF's address and the VF token that
/// opening it needs: vfio-pci lets a VF of a PF it owns be opened only
/// with the token the PF's user set.
pub fn enable_one_vf(pf: &VfioDevice) -> Result<(String, String), String> {
    // before the token: without CONFIG_PCI_IOV the token ioctl only says ENOTTY
    let dir = dev_dir(&pf.bdf);
    if !dir.join("sriov_numvfs").exists() {
        return Err(format!(
            "{}: no sriov_numvfs: no SR-IOV capability, or a kernel without CONFIG_PCI_IOV",
            pf.bdf
        ));
    }
    let mut uuid = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut uuid))
        .map_err(|e| errstr("/dev/urandom", &e))?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
    uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
    let token = format!(
        "{}-{}-{}-{}-{}",
        hex(&uuid[0..4]),
        hex(&uuid[4..6]),
        hex(&uuid[6..8]),
        hex(&uuid[8..10]),
        hex(&uuid[10..16])
    );
    // struct vfio_device_feature { argsz, flags, data[] } with a uuid as data
    let mut buf = [0u8; 8 + 16];
    let argsz = buf.len() as u32;
    buf[0..4].copy_from_slice(&argsz.to_ne_bytes());
    buf[4..8].copy_from_slice(
        &(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN).to_ne_bytes(),
    );
    buf[8..].copy_from_slice(&uuid);
    // SAFETY: the kernel reads argsz bytes from our buffer.
    if unsafe { ioctl_with_ptr(&pf.device, VFIO_DEVICE_FEATURE(), buf.as_ptr()) } < 0 {
        return Err(last_err("VFIO_DEVICE_FEATURE(PCI_VF_TOKEN)"));
    }
    write_attr(dir.join("sriov_numvfs"), "1").map_err(|e| {
        let hint = if Path::new("/sys/module/vfio_pci/parameters/enable_sriov").exists() {
            ""
        } else {
            " (vfio_pci.enable_sriov=1 missing?)"
        };
        errstr(&format!("{}: sriov_numvfs{hint}", pf.bdf), &e)
    })?;
    let vf = std::fs::read_link(dir.join("virtfn0"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| format!("{}: SR-IOV on, but no virtfn0", pf.bdf))?;
    Ok((vf, token))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn open_rw(p: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .map_err(|e| errstr(&format!("open {}", p.display()), &e))
}

impl VfioDevice {
    /// Open a device already bound to vfio-pci.
    pub fn open(bdf: &str) -> Result<VfioDevice, String> {
        Self::open_with_token(bdf, None)
    }

    /// Open a device already bound to vfio-pci; a VF of a PF that vfio-pci
    /// owns needs its PF's VF token.
    pub fn open_with_token(bdf: &str, vf_token: Option<&str>) -> Result<VfioDevice, String> {
        let link = std::fs::read_link(dev_dir(bdf).join("iommu_group"))
            .map_err(|e| errstr(&format!("{bdf}: iommu_group"), &e))?;
        let group_no = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{bdf}: bad iommu_group link"))?;
        let container = open_rw(Path::new("/dev/vfio/vfio"))?;
        // SAFETY: no-argument ioctl on our container fd.
        let api = unsafe { ioctl(&container, VFIO_GET_API_VERSION()) };
        if api != VFIO_API_VERSION as i32 {
            return Err(format!(
                "VFIO_GET_API_VERSION: {api}, expected {VFIO_API_VERSION}"
            ));
        }
        let plain = PathBuf::from(format!("/dev/vfio/{group_no}"));
        let noiommu_path = PathBuf::from(format!("/dev/vfio/noiommu-{group_no}"));
        // The group's node can trail the bind by a moment: seen once on
        // amd-avic right after a hot-replug (the bind step 56 ms after the
        // device came back found neither node)
        let t0 = Instant::now();
        let (group_path, noiommu) = loop {
            if plain.exists() {
                break (plain, false);
            } else if noiommu_path.exists() {
                break (noiommu_path, true);
            } else if t0.elapsed() > Duration::from_secs(2) {
                return Err(format!(
                    "{bdf}: neither {} nor {} exists after 2 s (driver: {})",
                    plain.display(),
                    noiommu_path.display(),
                    current_driver(bdf).unwrap_or_else(|| "none".into())
                ));
            }
            sleep(Duration::from_millis(10));
        };
        let group = open_rw(&group_path)?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes a vfio_group_status we own.
        if unsafe { ioctl_with_mut_ref(&group, VFIO_GROUP_GET_STATUS(), &mut status) } < 0 {
            return Err(last_err("VFIO_GROUP_GET_STATUS"));
        }
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(format!(
                "{bdf}: VFIO group {group_no} is not viable (other devices in it are bound to host drivers)"
            ));
        }
        let cfd: RawFd = container.as_raw_fd();
        // SAFETY: the kernel reads an int (the container fd).
        if unsafe { ioctl_with_ptr(&group, VFIO_GROUP_SET_CONTAINER(), &cfd) } < 0 {
            return Err(last_err("VFIO_GROUP_SET_CONTAINER"));
        }
        let iommu_type = if noiommu {
            VFIO_NOIOMMU_IOMMU
        } else {
            VFIO_TYPE1_IOMMU
        };
        let name = if noiommu {
            "VFIO_SET_IOMMU(NOIOMMU)"
        } else {
            "VFIO_SET_IOMMU(TYPE1)"
        };
        // SAFETY: value ioctl on our container fd.
        if unsafe { ioctl_with_val(&container, VFIO_SET_IOMMU(), iommu_type.into()) } < 0 {
            return Err(last_err(name));
        }
        let name = match vf_token {
            Some(t) => format!("{bdf} vf_token={t}"),
            None => bdf.to_string(),
        };
        let cbdf = std::ffi::CString::new(name).map_err(|_| "bad bdf".to_string())?;
        // SAFETY: the kernel reads the NUL-terminated device name.
        let dfd = unsafe { ioctl_with_ptr(&group, VFIO_GROUP_GET_DEVICE_FD(), cbdf.as_ptr()) };
        if dfd < 0 {
            return Err(last_err("VFIO_GROUP_GET_DEVICE_FD"));
        }
        // SAFETY: the ioctl returned a new fd that we now own.
        let device = unsafe { File::from_raw_fd(dfd) };
        let mut d = VfioDevice {
            bdf: bdf.to_string(),
            noiommu,
            request: None,
            device,
            group,
            container,
            config: Region::default(),
            bar0: Region::default(),
            pf: None,
        };
        d.config = d.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        d.bar0 = d.region(VFIO_PCI_BAR0_REGION_INDEX)?;
        if d.bar0.size == 0 {
            return Err(format!("{bdf}: BAR0 region is empty"));
        }
        d.enable_bus_master()?;
        let request = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| errstr("eventfd", &e))?;
        d.set_irqs(VFIO_PCI_REQ_IRQ_INDEX, 0, &[request.as_raw_fd()])
            .map_err(|e| format!("{bdf}: request notification: {e}"))?;
        d.request = Some(request);
        Ok(d)
    }

    fn region(&self, index: u32) -> Result<Region, String> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: the kernel fills a vfio_region_info we own (argsz bounds it).
        if unsafe { ioctl_with_mut_ref(&self.device, VFIO_DEVICE_GET_REGION_INFO(), &mut info) } < 0
        {
            return Err(last_err(&format!("VFIO_DEVICE_GET_REGION_INFO({index})")));
        }
        Ok(Region {
            offset: info.offset,
            size: info.size,
        })
    }

    fn enable_bus_master(&self) -> Result<(), String> {
        let mut b = [0u8; 2];
        self.device
            .read_exact_at(&mut b, self.config.offset + PCI_COMMAND)
            .map_err(|e| errstr("read PCI_COMMAND", &e))?;
        let cmd = u16::from_le_bytes(b) | PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
        self.device
            .write_all_at(&cmd.to_le_bytes(), self.config.offset + PCI_COMMAND)
            .map_err(|e| errstr("write PCI_COMMAND", &e))
    }

    /// Whether vfio-pci asked for the device back since the last call.
    pub fn release_requested(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.read().is_ok())
    }

    /// 32-bit write into BAR0.
    pub fn bar0_write32(&self, off: u64, val: u32) -> Result<(), String> {
        self.device
            .write_all_at(&val.to_le_bytes(), self.bar0.offset + off)
            .map_err(|e| errstr(&format!("BAR0 write at {off:#x}"), &e))
    }

    /// VFIO_DEVICE_SET_IRQS on the MSI index: eventfds for vectors 0..n
    /// (DATA_EVENTFD|ACTION_TRIGGER), or count 0 with DATA_NONE to disable.
    pub fn set_msi(&self, fds: &[RawFd]) -> Result<(), String> {
        self.set_irqs(VFIO_PCI_MSI_IRQ_INDEX, 0, fds)
    }

    /// VFIO_DEVICE_SET_IRQS on the MSI-X index: eventfds for vectors
    /// `start..start + fds.len()`, -1 meaning no eventfd for that vector;
    /// no fds disables MSI-X.
    pub fn set_msix(&self, start: u32, fds: &[RawFd]) -> Result<(), String> {
        self.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, start, fds)
    }

    /// VFIO_DEVICE_SET_IRQS on the INTx index: the trigger eventfd, or
    /// `None` to disable INTx.
    pub fn set_intx(&self, fd: Option<RawFd>) -> Result<(), String> {
        self.set_irqs(VFIO_PCI_INTX_IRQ_INDEX, 0, fd.as_slice())
    }

    /// VFIO_DEVICE_SET_IRQS on the INTx index with ACTION_UNMASK |
    /// DATA_EVENTFD: VFIO unmasks the line whenever `fd` is signalled.
    pub fn set_intx_unmask_eventfd(&self, fd: RawFd) -> Result<(), String> {
        self.set_irqs_action(
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            &[fd],
        )
    }

    /// The first page of BAR0 mapped into the agent, for a VM's memory
    /// slot: (address, length). The mapping holds the device file open in
    /// the kernel; its owner unmaps it after the VM is gone.
    pub fn map_bar0_page(&self) -> Result<(usize, usize), String> {
        let len = 0x1000usize;
        if self.bar0.size < len as u64 {
            return Err(format!("{}: BAR0 is smaller than a page", self.bdf));
        }
        // SAFETY: a shared mapping of the device fd at BAR0's region offset;
        // checked below, unmapped by the owner of the returned address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                self.bar0.offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_err(&format!("{}: mmap BAR0", self.bdf)));
        }
        Ok((ptr as usize, len))
    }

    fn set_irqs(&self, index: u32, start: u32, fds: &[RawFd]) -> Result<(), String> {
        self.set_irqs_action(index, VFIO_IRQ_SET_ACTION_TRIGGER, start, fds)
    }

    fn set_irqs_action(
        &self,
        index: u32,
        action: u32,
        start: u32,
        fds: &[RawFd],
    ) -> Result<(), String> {
        // header of 5 u32 followed by the fds, as one u32 buffer
        let mut buf: Vec<u32> = vec![0; 5 + fds.len()];
        buf[0] = (buf.len() * 4) as u32;
        buf[1] = if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE | action
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD | action
        };
        buf[2] = index;
        buf[3] = start;
        buf[4] = fds.len() as u32;
        for (i, fd) in fds.iter().enumerate() {
            buf[5 + i] = *fd as u32;
        }
        // SAFETY: the kernel reads argsz bytes from our buffer.
        if unsafe { ioctl_with_ptr(&self.device, VFIO_DEVICE_SET_IRQS(), buf.as_ptr()) } < 0 {
            return Err(last_err("VFIO_DEVICE_SET_IRQS"));
        }
        Ok(())
    }
}
