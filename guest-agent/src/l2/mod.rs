//! The tiny L2 guest: a real-mode program (assembled at build time, see
//! `program.rs`) that takes interrupts through its x2APIC and counts them per
//! vector in memory the agent reads back, run on a vCPU thread of its own.
//!
//! Handshake (all through the control block in guest memory, see `layout`):
//! the agent writes the mode, then a new request generation; the L2 reads
//! both at the top of its main loop and writes the generation back as its
//! acknowledgement. A halted L2 is woken for that with a KVM_SIGNAL_MSI on
//! `KICK_VECTOR`. Because the route vectors (0x40 up) outrank the kick
//! vector, an acknowledgement also means every interrupt that was pending
//! when the kick arrived has been taken. To stop, the agent requests `park`:
//! the L2 does `out PORT_PARK`, and the vCPU thread
//! leaves its KVM_RUN loop there. A thread that does not park in time is
//! kicked out of KVM_RUN with `immediate_exit` and a signal.

pub mod layout;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msi, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use wire::{L2Apic, L2Mode};

use crate::sys::errno_str;
use layout::*;

#[allow(dead_code)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/l2_program.rs"));
}
#[cfg(test)]
use generated::MAIN_LOOP;
pub use generated::{PROGRAM, STUBS};

/// How long an L2 may go without progress (reporting ready, acknowledging
/// a request, sending the next IPI). Generous: on a loaded 2-core host a
/// TCG L1 shares a core with other guests and its L2 gets a fraction of
/// that; 5 s failed about one run in twelve of a parallel matrix. A real
/// hang still ends the step, and the host's own watchdog stays longer.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// The signal that kicks a vCPU thread out of KVM_RUN (handler does nothing).
const KICK_SIGNAL: libc::c_int = libc::SIGUSR1;

/// `CTL_MODE` value of a mode.
pub fn mode_code(mode: L2Mode) -> u32 {
    match mode {
        L2Mode::Running => MODE_RUNNING,
        L2Mode::Halted => MODE_HALTED,
        L2Mode::Alternate => MODE_ALTERNATE,
    }
}

/// The x2APIC timer initial count for an `alternate` phase of `ms` (KVM's
/// APIC bus: 1 ns per tick at divide-by-1).
pub fn period_count(ms: u32) -> u32 {
    ms.saturating_mul(1_000_000)
}

/// The initial contents of guest memory: IVT, control block, program.
pub fn image() -> Vec<u8> {
    let mut m = vec![0u8; MEM_SIZE];
    for (v, off) in STUBS.iter().enumerate() {
        let e = usize::from(IVT) + 4 * v;
        m[e..e + 2].copy_from_slice(&off.to_le_bytes());
        m[e + 2..e + 4].copy_from_slice(&0u16.to_le_bytes());
    }
    let c = usize::from(CODE);
    m[c..c + PROGRAM.len()].copy_from_slice(PROGRAM);
    let p = usize::from(CTL_PERIOD);
    m[p..p + 4].copy_from_slice(&period_count(wire::DEFAULT_ALTERNATE_MS).to_le_bytes());
    m
}

/// The level-ack entry of `vector`, if it has one.
pub fn level_ack_entry(vector: u8) -> Option<u16> {
    let i = u16::from(vector.checked_sub(ACK_FIRST_VECTOR)?);
    (i < ACK_VECTORS).then(|| ACKS + ACK_ENTRY * i)
}

/// Counter increase between two readings (the L2's counters are u32 and wrap).
pub fn delta(before: u32, after: u32) -> u64 {
    u64::from(after.wrapping_sub(before))
}

/// Anonymous memory backing the L2's single memory slot.
pub struct GuestMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; all accesses are volatile u32 reads/writes of
// aligned fields, shared with the L2 by design.
unsafe impl Send for GuestMem {}
// SAFETY: as above.
unsafe impl Sync for GuestMem {}

impl GuestMem {
    fn new(len: usize) -> Result<GuestMem, String> {
        // SAFETY: anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(crate::sys::last_err("mmap L2 memory"));
        }
        Ok(GuestMem {
            ptr: ptr.cast(),
            len,
        })
    }

    fn load(&self, bytes: &[u8]) {
        assert!(bytes.len() <= self.len);
        // SAFETY: in bounds, no L2 runs yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, bytes.len()) };
    }

    pub fn read_u32(&self, addr: u16) -> u32 {
        let a = usize::from(addr);
        assert!(a % 4 == 0 && a + 4 <= self.len);
        // SAFETY: aligned and in bounds; the L2 writes it concurrently.
        unsafe { std::ptr::read_volatile(self.ptr.add(a).cast::<u32>()) }
    }

    pub fn write_u32(&self, addr: u16, v: u32) {
        let a = usize::from(addr);
        assert!(a % 4 == 0 && a + 4 <= self.len);
        // SAFETY: aligned and in bounds; the L2 reads it concurrently.
        unsafe { std::ptr::write_volatile(self.ptr.add(a).cast::<u32>(), v) };
    }

    /// Interrupts the L2 has taken on `vector` so far.
    pub fn count(&self, vector: u8) -> u32 {
        self.read_u32(counter(vector))
    }

    pub fn counters(&self) -> [u32; 256] {
        let mut out = [0u32; 256];
        for (v, c) in out.iter_mut().enumerate() {
            *c = self.count(v as u8);
        }
        out
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// What the vCPU thread tells the agent.
#[derive(Default)]
struct Shared {
    /// IA32_APIC_BASE the L2 reported at PORT_READY.
    apic_base: Option<u32>,
    /// Why the thread stopped, when it was not asked to.
    error: Option<String>,
    /// Set when the thread has left its loop.
    exited: bool,
}

/// The L2 of one VM: its memory and, while it runs, its vCPU thread.
pub struct L2 {
    pub mem: Arc<GuestMem>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<VcpuFd>>,
    pthread: libc::pthread_t,
    /// `kvm_run` of the vCPU (mapped as long as the VcpuFd lives).
    run_ptr: usize,
    gen: u32,
    ipi_gen: u32,
    booted: bool,
    pub mode: Option<L2Mode>,
    pub started: Option<Instant>,
    /// The mode its local APIC runs in.
    apic: L2Apic,
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a handler that does nothing; no SA_RESTART, so KVM_RUN
        // returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(KICK_SIGNAL, &sa, std::ptr::null_mut());
        }
    });
}

impl L2 {
    /// Guest memory, CPUID (x2APIC offered), real-mode registers at the
    /// program's entry. Called once per VM, before its vCPU first runs.
    /// An xAPIC L2 (`apic`) gets FS's base at the APIC's MMIO page (the
    /// program never loads FS): its APIC accesses are `[fs:register]`.
    pub fn prepare(kvm: &Kvm, vm: &VmFd, vcpu: &VcpuFd, apic: L2Apic) -> Result<L2, String> {
        let mem = GuestMem::new(MEM_SIZE)?;
        mem.load(&image());
        mem.write_u32(CTL_XAPIC, u32::from(apic == L2Apic::Xapic));
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the mapping outlives the VM (Vm drops the VM fd first).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| errno_str("KVM_SET_USER_MEMORY_REGION", e.errno()))?;
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| errno_str("KVM_GET_SUPPORTED_CPUID", e.errno()))?;
        let mut has_x2apic = false;
        for e in cpuid.as_mut_slice() {
            if e.function == 1 {
                e.ebx &= 0x00ff_ffff; // initial APIC ID 0
                has_x2apic = e.ecx & (1 << 21) != 0;
            }
        }
        if !has_x2apic {
            return Err("KVM_GET_SUPPORTED_CPUID offers no x2APIC".into());
        }
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| errno_str("KVM_SET_CPUID2", e.errno()))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| errno_str("KVM_GET_SREGS", e.errno()))?;
        for s in [
            &mut sregs.cs,
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            s.base = 0;
            s.selector = 0;
        }
        if apic == L2Apic::Xapic {
            sregs.fs.base = XAPIC_MMIO;
            sregs.fs.limit = 0xfff;
        }
        sregs.idt.base = u64::from(IVT);
        sregs.idt.limit = 0x3ff;
        vcpu.set_sregs(&sregs)
            .map_err(|e| errno_str("KVM_SET_SREGS", e.errno()))?;
        let regs = kvm_bindings::kvm_regs {
            rip: u64::from(CODE),
            rsp: u64::from(STACK_TOP),
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs)
            .map_err(|e| errno_str("KVM_SET_REGS", e.errno()))?;
        install_kick_handler();
        let mut l2 = L2::with_mem(mem);
        l2.apic = apic;
        Ok(l2)
    }

    /// An L2 over `mem` whose vCPU thread has not started.
    fn with_mem(mem: GuestMem) -> L2 {
        L2 {
            mem: Arc::new(mem),
            shared: Arc::new(Mutex::new(Shared::default())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            pthread: 0,
            run_ptr: 0,
            gen: 0,
            ipi_gen: 0,
            booted: false,
            mode: None,
            started: None,
            apic: L2Apic::X2apic,
        }
    }

    /// Turns of the L2's main loop so far (`CTL_ITER`).
    pub fn iterations(&self) -> u32 {
        self.mem.read_u32(CTL_ITER)
    }

    pub fn running(&self) -> bool {
        self.thread.is_some()
    }

    /// Have the handler of `ack.vector` make `ack.writes` in the device page
    /// at `ack.gpa` before its EOI (the first free of the vector's two
    /// write slots per write; more are dropped with a message).
    pub fn set_level_ack(&self, ack: &crate::kvm::LevelAck) {
        let Some(entry) = level_ack_entry(ack.vector) else {
            crate::say!("no level-ack entry for vector {:#x}", ack.vector);
            return;
        };
        let seg = u32::try_from(ack.gpa >> 4).unwrap_or(0) & 0xffff;
        for (off, value) in &ack.writes {
            let free = [entry, entry + 8]
                .into_iter()
                .find(|e| self.mem.read_u32(*e) & 0xffff == 0);
            let Some(e) = free else {
                crate::say!("vector {:#x}: more than two level-ack writes", ack.vector);
                return;
            };
            self.mem.write_u32(e + 4, *value);
            std::sync::atomic::fence(Ordering::SeqCst);
            self.mem.write_u32(e, seg | (u32::from(*off) << 16));
        }
    }

    /// EOIs the L2 made so far.
    pub fn eois(&self) -> u32 {
        self.mem.read_u32(CTL_EOIS)
    }

    /// Why the vCPU thread stopped on its own, if it did.
    pub fn error(&self) -> Option<String> {
        lock(&self.shared).error.clone()
    }

    /// Ask for `mode` (writes mode, then a new generation) and wake the L2.
    fn request(&mut self, vm: &VmFd, mode: u32) -> Result<u32, String> {
        self.gen = self.gen.wrapping_add(1);
        self.mem.write_u32(CTL_MODE, mode);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.mem.write_u32(CTL_REQ, self.gen);
        kick(vm)?;
        Ok(self.gen)
    }

    /// Wait for the L2 to acknowledge generation `gen`.
    fn wait_ack(&self, gen: u32, tick: &mut dyn FnMut()) -> Result<(), String> {
        let t0 = Instant::now();
        while self.mem.read_u32(CTL_ACK) != gen {
            if let Some(e) = self.error() {
                return Err(e);
            }
            if t0.elapsed() > ACK_TIMEOUT {
                let s = lock(&self.shared);
                let what = match (s.apic_base, self.booted) {
                    (None, false) => "did not report ready".to_string(),
                    _ => format!(
                        "did not acknowledge (acked {}, iterations {})",
                        self.mem.read_u32(CTL_ACK),
                        self.mem.read_u32(CTL_ITER)
                    ),
                };
                return Err(format!("L2 {what} within {ACK_TIMEOUT:?}"));
            }
            tick();
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Start the vCPU thread (first time: from the program's entry) in
    /// `mode` and wait for the L2's acknowledgement. On error the thread may
    /// still run: the caller stops it to get the vCPU back.
    pub fn start(
        &mut self,
        vm: &VmFd,
        mut vcpu: VcpuFd,
        mode: L2Mode,
        period_ms: u32,
        tick: &mut dyn FnMut(),
    ) -> Result<(), String> {
        vcpu.set_kvm_immediate_exit(0);
        self.run_ptr = vcpu.get_kvm_run() as *mut kvm_bindings::kvm_run as usize;
        self.stop.store(false, Ordering::SeqCst);
        *lock(&self.shared) = Shared::default();
        self.mem.write_u32(CTL_PERIOD, period_count(period_ms));
        self.mem.write_u32(CTL_MODE, mode_code(mode));
        let (shared, stop) = (self.shared.clone(), self.stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("l2-vcpu".into())
            .spawn(move || {
                // SAFETY: pthread_self is always safe.
                let _ = tx.send(unsafe { libc::pthread_self() });
                vcpu_loop(&mut vcpu, &shared, &stop);
                lock(&shared).exited = true;
                vcpu
            })
            .map_err(|e| format!("spawning the vCPU thread: {e}"))?;
        self.pthread = rx.recv().unwrap_or(0);
        self.thread = Some(handle);
        self.mode = Some(mode);
        self.started = Some(Instant::now());
        let gen = self.request(vm, mode_code(mode))?;
        self.wait_ack(gen, tick)?;
        if !self.booted {
            let base = lock(&self.shared).apic_base.unwrap_or(0);
            let (want, name) = match self.apic {
                L2Apic::X2apic => (APIC_BASE_EN | APIC_BASE_EXTD, "x2APIC"),
                L2Apic::Xapic => (APIC_BASE_EN, "xAPIC"),
            };
            if base & (APIC_BASE_EN | APIC_BASE_EXTD) != want {
                return Err(format!(
                    "L2 is not in {name} mode: IA32_APIC_BASE {base:#x}"
                ));
            }
            self.booted = true;
        }
        Ok(())
    }

    /// Make the running L2 send itself `count` IPIs on `vector` (see
    /// `wire::Step::Ipi`): writes the request, re-requests the current mode
    /// (which ends an `alternate` phase and wakes a halted L2), waits for
    /// the L2 to acknowledge, then for the vector's counter to catch up.
    /// Returns (ICR writes the L2 made, interrupts it took on `vector`).
    /// Fails when the L2 stops making progress for `ACK_TIMEOUT`.
    pub fn ipi(
        &mut self,
        vm: &VmFd,
        vector: u8,
        count: u32,
        tick: &mut dyn FnMut(),
    ) -> Result<(u64, u64), String> {
        let mode = self.mode.ok_or("L2 is not running")?;
        let (sent0, taken0) = (self.mem.read_u32(CTL_IPI_SENT), self.mem.count(vector));
        let mem = self.mem.clone();
        let progress = || {
            (
                delta(sent0, mem.read_u32(CTL_IPI_SENT)),
                delta(taken0, mem.count(vector)),
            )
        };
        self.ipi_gen = self.ipi_gen.wrapping_add(1);
        self.mem.write_u32(CTL_IPI_VECTOR, u32::from(vector));
        self.mem.write_u32(CTL_IPI_COUNT, count);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.mem.write_u32(CTL_IPI_REQ, self.ipi_gen);
        self.request(vm, mode_code(mode))?;
        let mut last = (progress(), Instant::now());
        loop {
            let now = progress();
            let acked = self.mem.read_u32(CTL_IPI_ACK) == self.ipi_gen;
            if acked && now.1 >= now.0 {
                return Ok(now);
            }
            if let Some(e) = self.error() {
                return Err(e);
            }
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > ACK_TIMEOUT {
                if acked {
                    // sent, but not all taken: the counts say so
                    return Ok(now);
                }
                return Err(format!(
                    "L2 did not finish sending IPIs within {ACK_TIMEOUT:?} of its last progress (sent {} of {count}, took {})",
                    now.0, now.1
                ));
            }
            tick();
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Park the L2 and join its thread; returns the vCPU. Falls back to
    /// kicking the thread out of KVM_RUN when the L2 does not park in time.
    pub fn stop(&mut self, vm: &VmFd) -> (Option<VcpuFd>, Result<(), String>) {
        let Some(handle) = self.thread.take() else {
            return (None, Err("L2 is not running".into()));
        };
        let mut result = lock(&self.shared).error.clone().map_or(Ok(()), Err);
        let parked = self.request(vm, MODE_PARK).and_then(|_| {
            let t0 = Instant::now();
            while !lock(&self.shared).exited {
                if t0.elapsed() > ACK_TIMEOUT {
                    return Err(format!("L2 did not park within {ACK_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        });
        if let Err(e) = parked {
            result = result.and(Err(e));
            self.stop.store(true, Ordering::SeqCst);
            // SAFETY: the VcpuFd (and so its kvm_run mapping) lives in the
            // thread until it is joined below; immediate_exit is a byte KVM
            // reads at entry.
            unsafe {
                let run = self.run_ptr as *mut kvm_bindings::kvm_run;
                std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1);
                libc::pthread_kill(self.pthread, KICK_SIGNAL);
            }
        }
        self.mode = None;
        self.started = None;
        match handle.join() {
            Ok(v) => (Some(v), result),
            Err(_) => (None, Err("the vCPU thread panicked".into())),
        }
    }

    /// Exceptions the L2 took (vectors 0..31): a broken program, not an interrupt.
    pub fn exceptions(&self) -> Vec<(u8, u32)> {
        (0..32u8)
            .map(|v| (v, self.mem.count(v)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    /// One line for the console: how the L2 spent its time and what it took.
    pub fn stats(&self) -> String {
        let taken: Vec<String> = self
            .mem
            .counters()
            .iter()
            .enumerate()
            .filter(|(v, c)| **c > 0 && *v >= 0x30)
            .map(|(v, c)| format!("{v:#x}: {c}"))
            .collect();
        format!(
            "iterations {}, halts {}, IPIs sent {}, timer {}, kicks {}, vectors [{}]",
            self.mem.read_u32(CTL_ITER),
            self.mem.read_u32(CTL_HALTS),
            self.mem.read_u32(CTL_IPI_SENT),
            self.mem.count(TIMER_VECTOR),
            self.mem.count(KICK_VECTOR),
            taken.join(", ")
        )
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// KVM_SIGNAL_MSI of `KICK_VECTOR` to APIC ID 0: wakes a halted L2.
fn kick(vm: &VmFd) -> Result<(), String> {
    let msi = kvm_msi {
        address_lo: crate::kvm::MSI_ADDR_APIC0,
        data: u32::from(KICK_VECTOR),
        ..Default::default()
    };
    vm.signal_msi(msi)
        .map(|_| ())
        .map_err(|e| errno_str("KVM_SIGNAL_MSI", e.errno()))
}

/// KVM_RUN until the L2 parks, the agent stops us, or something unexpected.
fn vcpu_loop(vcpu: &mut VcpuFd, shared: &Mutex<Shared>, stop: &AtomicBool) {
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let problem = match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_READY, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                lock(shared).apic_base = Some(u32::from_le_bytes(b));
                None
            }
            Ok(VcpuExit::IoOut(PORT_PARK, _)) => return,
            Ok(VcpuExit::IoOut(port, _)) => Some(format!("wrote to unexpected port {port:#x}")),
            Ok(VcpuExit::IoIn(port, _)) => Some(format!("read unexpected port {port:#x}")),
            Ok(VcpuExit::Shutdown) => Some("shut down (triple fault)".into()),
            Ok(VcpuExit::Hlt) => Some("halted to userspace (no in-kernel LAPIC?)".into()),
            Ok(VcpuExit::FailEntry(reason, _)) => {
                Some(format!("failed entry (reason {reason:#x})"))
            }
            Ok(VcpuExit::InternalError) => Some("KVM internal error".into()),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(errno_str("KVM_RUN", e.errno())),
        };
        if let Some(what) = problem {
            let rip = vcpu
                .get_regs()
                .map(|r| format!(" at rip {:#x}", r.rip))
                .unwrap_or_default();
            lock(shared).error = Some(format!("L2 {what}{rip}"));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // Invariants between constants: they are constant by design, and
    // checked here so that changing one of them fails a test.
    #[allow(clippy::assertions_on_constants)]
    fn layout_does_not_overlap() {
        assert!(usize::from(IVT) + 256 * 4 <= usize::from(CTL));
        assert!(CTL_APIC_BASE + 4 <= COUNTERS);
        assert!(usize::from(counter(255)) + 4 <= usize::from(CODE));
        assert!(usize::from(CODE) + PROGRAM.len() < usize::from(STACK_TOP) - 0x1000);
        assert!(usize::from(STACK_TOP) <= MEM_SIZE);
        // every ctl field and counter is aligned (volatile u32 access)
        assert!(CTL_IPI_SENT + 4 <= COUNTERS);
        assert!(CTL_XAPIC + 4 <= COUNTERS);
        for a in [
            CTL_MODE,
            CTL_REQ,
            CTL_ACK,
            CTL_PERIOD,
            CTL_ITER,
            CTL_HALTS,
            CTL_APIC_BASE,
            CTL_X2APIC_ID,
            CTL_XAPIC,
            CTL_IPI_VECTOR,
            CTL_IPI_COUNT,
            CTL_IPI_REQ,
            CTL_IPI_ACK,
            CTL_IPI_SENT,
            counter(0x40),
        ] {
            assert_eq!(a % 4, 0);
        }
    }

    #[test]
    // Invariants between constants: they are constant by design, and
    // checked here so that changing one of them fails a test.
    #[allow(clippy::assertions_on_constants)]
    fn vectors_the_agent_uses_are_distinct_from_route_vectors() {
        // routes use 0x40 + n (runner::FIRST_VECTOR); the L2's own vectors stay below
        assert!(TIMER_VECTOR < 0x40 && KICK_VECTOR < 0x40);
        assert!(
            TIMER_VECTOR >= 0x20 && KICK_VECTOR >= 0x20,
            "not exception vectors"
        );
        // a route vector outranks the kick (priority class = vector >> 4), so
        // an acknowledged kick means pending route interrupts were taken first
        assert!(0x40 >> 4 > KICK_VECTOR >> 4);
        // ipi vectors: between the two, so they collide with neither
        for v in wire::IPI_VECTORS {
            assert!(v != TIMER_VECTOR && v != KICK_VECTOR && v != SPURIOUS_VECTOR && v < 0x40);
        }
        assert!(*wire::IPI_VECTORS.start() >> 4 > KICK_VECTOR >> 4);
    }

    #[test]
    fn program_writes_the_icr_with_its_own_x2apic_id() {
        let icr = [0x66, 0xb9, 0x30, 0x08, 0x00, 0x00]; // mov ecx, 0x830
        assert!(PROGRAM.windows(6).any(|w| w == icr));
        let id = [0x66, 0xb9, 0x02, 0x08, 0x00, 0x00]; // mov ecx, 0x802
        assert!(PROGRAM.windows(6).any(|w| w == id));
        let m = image();
        for a in [CTL_IPI_REQ, CTL_IPI_ACK, CTL_IPI_SENT] {
            let a = usize::from(a);
            assert_eq!(&m[a..a + 4], &[0, 0, 0, 0], "no ipi requested at start");
        }
    }

    #[test]
    fn program_starts_with_cli_and_ivt_points_at_stubs() {
        assert_eq!(PROGRAM[0], 0xfa, "cli");
        let m = image();
        let end = usize::from(CODE) + PROGRAM.len();
        let mut seen = std::collections::BTreeSet::new();
        for v in 0..256usize {
            let off = u16::from_le_bytes([m[4 * v], m[4 * v + 1]]);
            let seg = u16::from_le_bytes([m[4 * v + 2], m[4 * v + 3]]);
            assert_eq!(seg, 0);
            assert!(usize::from(off) > usize::from(MAIN_LOOP) && usize::from(off) < end);
            assert!(seen.insert(off), "vector {v} shares a stub");
            // the stub is `inc dword [disp16]` (66 ff 06 lo hi) of its own counter
            let s = usize::from(off);
            let c = counter(v as u8).to_le_bytes();
            assert_eq!(
                &m[s..s + 5],
                &[0x66, 0xff, 0x06, c[0], c[1]],
                "stub of vector {v:#x}"
            );
        }
    }

    #[test]
    fn program_ends_with_eoi_and_iret() {
        // ... wrmsr; inc [CTL_EOIS]; pop es; pop ebp; pop edi; pop ebx; pop edx; pop ecx; pop eax; add sp, 2; iret
        let tail = &PROGRAM[PROGRAM.len() - 17..];
        assert_eq!(
            tail,
            &[
                0x07, 0x66, 0x5d, 0x66, 0x5f, 0x66, 0x5b, 0x66, 0x5a, 0x66, 0x59, 0x66, 0x58, 0x83,
                0xc4, 0x02, 0xcf
            ]
        );
        let eoi = [0x66, 0xb9, 0x0b, 0x08, 0x00, 0x00];
        assert!(PROGRAM.windows(6).any(|w| w == eoi), "mov ecx, 0x80b");
        // wrmsr appears; the x2APIC enable bits are or-ed in
        assert!(PROGRAM.windows(2).any(|w| w == [0x0f, 0x30]));
        let or = [0x66, 0x0d, 0x00, 0x0c, 0x00, 0x00]; // or eax, 0xc00
        assert!(PROGRAM.windows(6).any(|w| w == or));
    }

    #[test]
    fn level_ack_entries() {
        assert_eq!(level_ack_entry(0x3f), None);
        assert_eq!(level_ack_entry(0x40), Some(ACKS));
        assert_eq!(level_ack_entry(0x7f), Some(ACKS + 63 * ACK_ENTRY));
        assert_eq!(level_ack_entry(0x80), None);
        const { assert!(ACKS >= COUNTERS + 0x400 && ACKS + ACK_VECTORS * ACK_ENTRY <= CODE) };
        const { assert!(CTL_EOIS + 4 <= COUNTERS) };
        let l2 = L2::with_mem(GuestMem::new(MEM_SIZE).unwrap());
        let ack = |gpa| crate::kvm::LevelAck {
            vector: 0x41,
            gpa,
            writes: vec![(0x64, 1)],
        };
        l2.set_level_ack(&ack(0x10000));
        l2.set_level_ack(&ack(0x11000));
        let e = ACKS + ACK_ENTRY;
        assert_eq!(l2.mem.read_u32(e), 0x1000 | (0x64 << 16));
        assert_eq!(l2.mem.read_u32(e + 4), 1);
        assert_eq!(l2.mem.read_u32(e + 8), 0x1100 | (0x64 << 16));
    }

    #[test]
    fn image_holds_program_and_default_period() {
        let m = image();
        assert_eq!(m.len(), MEM_SIZE);
        let c = usize::from(CODE);
        assert_eq!(&m[c..c + PROGRAM.len()], PROGRAM);
        let p = usize::from(CTL_PERIOD);
        assert_eq!(
            u32::from_le_bytes(m[p..p + 4].try_into().unwrap()),
            wire::DEFAULT_ALTERNATE_MS * 1_000_000
        );
        let mode = usize::from(CTL_MODE);
        assert_eq!(
            &m[mode..mode + 4],
            &[0, 0, 0, 0],
            "running until told otherwise"
        );
    }

    #[test]
    fn modes_and_counters() {
        assert_eq!(mode_code(L2Mode::Running), MODE_RUNNING);
        assert_eq!(mode_code(L2Mode::Halted), MODE_HALTED);
        assert_eq!(mode_code(L2Mode::Alternate), MODE_ALTERNATE);
        let codes = [MODE_RUNNING, MODE_HALTED, MODE_ALTERNATE, MODE_PARK];
        let set: std::collections::BTreeSet<_> = codes.iter().collect();
        assert_eq!(set.len(), 4);
        assert_eq!(period_count(5), 5_000_000);
        assert_eq!(period_count(u32::MAX), u32::MAX);

        assert_eq!(delta(5, 12), 7);
        assert_eq!(delta(u32::MAX - 1, 3), 5, "wraps");
    }

    #[test]
    fn guest_mem_round_trip() {
        let m = GuestMem::new(MEM_SIZE).unwrap();
        m.load(&image());
        m.write_u32(counter(0x42), 9);
        m.write_u32(counter(0xff), u32::MAX);
        assert_eq!(m.count(0x42), 9);
        let c = m.counters();
        assert_eq!((c[0x42], c[0xff], c[0x41]), (9, u32::MAX, 0));
        // the counters sit where the stubs increment them: little-endian u32 at COUNTERS + 4v
        // SAFETY: in bounds of the mapping.
        let raw = unsafe { std::slice::from_raw_parts(m.ptr.add(usize::from(counter(0x42))), 4) };
        assert_eq!(raw, &[9, 0, 0, 0]);
        assert_eq!(
            m.read_u32(CTL_PERIOD),
            period_count(wire::DEFAULT_ALTERNATE_MS)
        );
    }
}
