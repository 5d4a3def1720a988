//! Boots whose scenarios start a real L2 (`start-l2`): their initramfs
//! carries a VMM (the QEMU binary the boot itself runs on, its library
//! closure and firmware, `images::vmm_files`), the L2 kernel (the same
//! bzImage) and the L2's own initramfs (busybox, the NIC drivers, the same
//! agent, which takes its L2 role from the kernel command line). Both
//! archives are content-keyed cache entries, written atomically.

use std::path::{Path, PathBuf};

use crate::run::KernelImages;

/// Where the L1 agent (`guest-agent/src/nested.rs`) finds the L2's kernel
/// and initramfs.
pub const GUEST_L2_KERNEL: &str = "/opt/testbed/l2/kernel";
pub const GUEST_L2_INITRD: &str = "/opt/testbed/l2/initrd";

/// Modules the L2 loads: the drivers of the NICs an L2 may be given,
/// each where the kernel has it (the testbed's built kernels have neither).
pub const L2_MODULES: &[&[&str]] = &[&["igb"], &["e1000e"]];

/// What an L2 given a vDPA device also loads: the virtio-net it sees
/// (`virtio_pci`, a module in Debian's kernels, built in the testbed's).
pub const L2_VIRTIO_MODULES: &[&[&str]] = &[&["virtio_net"], &["virtio_pci"]];

/// The L2's initramfs, then L1's with the VMM and the L2 inside.
/// `virtio`: an L2 of the boot is given a vDPA device (a virtio-net in L2).
pub fn nested_initrd(
    cache: &images::Cache,
    images: &KernelImages,
    vmm: &Path,
    firmware_dirs: &[PathBuf],
    virtio: bool,
    progress: &mut dyn FnMut(images::Progress),
) -> Result<PathBuf, images::ImagesError> {
    let kernel = &images.kernel;
    let busybox = PathBuf::from("/bin/busybox");
    let mut l2_modules = L2_MODULES.to_vec();
    if virtio {
        l2_modules.extend_from_slice(L2_VIRTIO_MODULES);
    }
    let l2 = images::build_initramfs(
        cache,
        &images::InitramfsSpec {
            kernel,
            modules: &[],
            optional: &l2_modules,
            agent: &images.agent,
            busybox: &busybox,
            files: &[],
        },
        progress,
    )?;
    let mut files = images::vmm_files(vmm, firmware_dirs)?;
    files.push((GUEST_L2_KERNEL.to_owned(), kernel.bzimage.clone()));
    files.push((GUEST_L2_INITRD.to_owned(), l2));
    let modules = crate::run::guest_modules(crate::qemu::Accel::Tcg);
    let optional = crate::run::optional_guest_modules();
    let optional: Vec<&[&str]> = optional.iter().map(Vec::as_slice).collect();
    images::build_initramfs(
        cache,
        &images::InitramfsSpec {
            kernel,
            modules: &modules,
            optional: &optional,
            agent: &images.agent,
            busybox: &busybox,
            files: &files,
        },
        progress,
    )
}
