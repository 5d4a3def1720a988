//! Where things live in the L2 guest's memory, and the codes the agent and
//! the L2 program exchange. Shared by the build script (which assembles the
//! program against these addresses) and the agent (which loads it and reads
//! the counters back), so the two cannot disagree.
//!
//! The L2 runs in real mode with every segment base 0, so guest-physical,
//! linear and 16-bit offsets are the same numbers.
//!
//! ```text
//! 0x0000  IVT: 256 x (offset u16, segment u16), one stub per vector
//! 0x0800  control block (u32 fields, see CTL_*)
//! 0x1000  counters: 256 x u32, interrupts taken per vector
//! 0x1400  level acks: per vector 0x40..0x7f, two (segment u16, offset
//!         u16, value u32) writes the handler makes before its EOI
//!         (segment 0: none)
//! 0x2000  code: entry, main loop, one stub per vector, common handler
//! 0x8000  top of the stack (grows down)
//! 0x10000 end of guest memory; device pages (BAR0's first page of an
//!         INTx device) follow, one per 4 KiB, in their own memory slots
//! ```

#![allow(dead_code)]

/// Guest memory size (one slot at guest-physical 0).
pub const MEM_SIZE: usize = 0x10000;
/// Real-mode interrupt vector table.
pub const IVT: u16 = 0x0000;
/// Control block.
pub const CTL: u16 = 0x0800;
/// Requested mode (`MODE_*`), written by the agent.
pub const CTL_MODE: u16 = CTL;
/// Request generation, written by the agent after `CTL_MODE`.
pub const CTL_REQ: u16 = CTL + 4;
/// The last request generation the L2 read (with its mode), written by the L2.
pub const CTL_ACK: u16 = CTL + 8;
/// `alternate`: phase length as an x2APIC timer initial count (divide by 1:
/// KVM's APIC bus runs at 1 GHz, so nanoseconds).
pub const CTL_PERIOD: u16 = CTL + 12;
/// Main-loop iterations, written by the L2.
pub const CTL_ITER: u16 = CTL + 16;
/// `hlt` instructions executed, written by the L2.
pub const CTL_HALTS: u16 = CTL + 20;
/// IA32_APIC_BASE (low half) as the L2 read it back after enabling x2APIC.
pub const CTL_APIC_BASE: u16 = CTL + 24;
/// The L2's x2APIC ID (MSR 0x802) as read at setup, written by the L2.
pub const CTL_X2APIC_ID: u16 = CTL + 28;
/// `ipi` request: the vector to send, written by the agent.
pub const CTL_IPI_VECTOR: u16 = CTL + 32;
/// `ipi` request: how many IPIs to send, written by the agent.
pub const CTL_IPI_COUNT: u16 = CTL + 36;
/// `ipi` request generation, written by the agent after vector and count.
pub const CTL_IPI_REQ: u16 = CTL + 40;
/// The last `ipi` generation the L2 finished sending, written by the L2.
pub const CTL_IPI_ACK: u16 = CTL + 44;
/// ICR writes (IPIs sent) so far, written by the L2.
pub const CTL_IPI_SENT: u16 = CTL + 48;
/// EOIs the handlers wrote (every vector), written by the L2 after each EOI.
pub const CTL_EOIS: u16 = CTL + 52;
/// Non-zero: the APIC is used in xAPIC mode, through `[fs:XAPIC_*]` (the
/// agent sets FS's base to `XAPIC_MMIO`), else in x2APIC mode through its
/// MSRs. Written by the agent before the L2 first runs.
pub const CTL_XAPIC: u16 = CTL + 56;
/// Level-ack table (see the module doc).
pub const ACKS: u16 = 0x1400;
/// First vector with a level-ack entry.
pub const ACK_FIRST_VECTOR: u8 = 0x40;
/// Vectors with a level-ack entry.
pub const ACK_VECTORS: u16 = 0x40;
/// Bytes per level-ack entry (two writes).
pub const ACK_ENTRY: u16 = 16;
/// Guest-physical address of the first device page.
pub const BAR_PAGES: u64 = 0x10000;
/// Per-vector interrupt counters (u32 each).
pub const COUNTERS: u16 = 0x1000;
/// Code origin and entry point.
pub const CODE: u16 = 0x2000;
/// Initial stack pointer.
pub const STACK_TOP: u16 = 0x8000;

/// Main-loop modes (`CTL_MODE`).
pub const MODE_RUNNING: u32 = 0;
pub const MODE_HALTED: u32 = 1;
pub const MODE_ALTERNATE: u32 = 2;
/// Leave KVM_RUN through an `out` to `PORT_PARK`; go on with the main loop
/// when the vCPU runs again.
pub const MODE_PARK: u32 = 3;

/// `out dx, eax` once after setup: the value is IA32_APIC_BASE (low half).
pub const PORT_READY: u16 = 0x10;
/// `out dx, al` in `MODE_PARK`.
pub const PORT_PARK: u16 = 0x11;

/// The x2APIC timer's vector (one-shot, used by `alternate`).
pub const TIMER_VECTOR: u8 = 0x20;
/// The vector the agent sends (KVM_SIGNAL_MSI) to wake a halted L2 so it
/// reads a new request.
pub const KICK_VECTOR: u8 = 0x21;
/// Spurious-interrupt vector programmed into the x2APIC SVR.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// `pause` iterations the L2 waits for each IPI it sent to arrive before it
/// sends the next (a lost one does not hang it; the counts show it).
pub const IPI_SPIN: u32 = 1 << 20;

/// IA32_APIC_BASE: global enable.
pub const APIC_BASE_EN: u32 = 1 << 11;
/// IA32_APIC_BASE: x2APIC mode.
pub const APIC_BASE_EXTD: u32 = 1 << 10;

/// MSRs the program uses.
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_X2APIC_ID: u32 = 0x802;
pub const MSR_X2APIC_TPR: u32 = 0x808;
pub const MSR_X2APIC_EOI: u32 = 0x80b;
pub const MSR_X2APIC_SVR: u32 = 0x80f;
pub const MSR_X2APIC_ICR: u32 = 0x830;
pub const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
pub const MSR_X2APIC_TIMER_INIT: u32 = 0x838;
pub const MSR_X2APIC_TIMER_DIV: u32 = 0x83e;

/// The xAPIC's MMIO page (IA32_APIC_BASE's default), FS's base in an
/// xAPIC L2, and the registers the program uses (offsets in that page).
pub const XAPIC_MMIO: u64 = 0xfee0_0000;
pub const XAPIC_ID: u16 = 0x20;
pub const XAPIC_TPR: u16 = 0x80;
pub const XAPIC_EOI: u16 = 0xb0;
pub const XAPIC_SVR: u16 = 0xf0;
pub const XAPIC_ICR_LO: u16 = 0x300;
pub const XAPIC_ICR_HI: u16 = 0x310;
pub const XAPIC_LVT_TIMER: u16 = 0x320;
pub const XAPIC_TIMER_INIT: u16 = 0x380;
pub const XAPIC_TIMER_DIV: u16 = 0x3e0;

/// Address of the counter of `vector`.
pub const fn counter(vector: u8) -> u16 {
    COUNTERS + 4 * vector as u16
}
