//! The L2 program, assembled by `build.rs` with iced-x86's code assembler.
//!
//! Compiled only into the build script (it needs iced-x86, which the agent
//! itself does not link): the agent embeds the bytes and the stub table the
//! build script writes to `$OUT_DIR/l2_program.rs`.
//!
//! 16-bit real mode, every segment base 0 (the agent sets CS, the program
//! the rest). What it does:
//!
//! The APIC is used in x2APIC mode through its MSRs, or, when the agent
//! set `CTL_XAPIC` (with FS's base at the APIC's MMIO page), in xAPIC mode
//! through `[fs:register]`: every APIC access below branches on that flag
//! (`apic_write`).
//!
//! 1. Enters x2APIC mode (IA32_APIC_BASE |= EN|EXTD; xAPIC: stays), sets the TPR to 0,
//!    software-enables the APIC (SVR = 0x1ff), programs the timer (one-shot,
//!    vector `TIMER_VECTOR`, divide by 1, not armed), reads IA32_APIC_BASE
//!    back into the control block and reports it with `out PORT_READY`.
//! 2. Enables interrupts and loops: read the request generation and the mode,
//!    acknowledge the generation, then one round of the mode: `running`
//!    spins with `pause`, `halted` does `sti; hlt` (after checking, with
//!    interrupts off, that no request came meanwhile), `alternate` spins for
//!    one timer period and halts for the next, `park` leaves KVM_RUN with
//!    `out PORT_PARK` (interrupts stay enabled) and goes on when resumed.
//!    Before that, an `ipi` request (generation in `CTL_IPI_REQ` not yet
//!    acknowledged) makes it write its x2APIC ICR `CTL_IPI_COUNT` times
//!    (vector `CTL_IPI_VECTOR`, fixed, physical destination = its own
//!    x2APIC ID), waiting a bounded time for each IPI to be taken.
//! 3. Every vector has its own stub in the IVT: `inc dword [counter]`, push
//!    the vector, then the common tail makes the vector's level-ack writes
//!    (vectors 0x40..0x7f with an entry in the `ACKS` table: the device's
//!    ack, which de-asserts its INTx line, as a driver's handler does before
//!    the EOI of a level interrupt), EOIs through the x2APIC EOI MSR,
//!    counts the EOI in `CTL_EOIS`, drops the vector and `iret`s. (xAPIC: the
//!    EOI is a write to the MMIO page; with AVIC that is the vAPIC page,
//!    and the EOI of a level-triggered vector exits to the hypervisor.) Flags are
//!    restored by `iret`, the registers the tail uses are saved.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use crate::layout::*;

/// The assembled program: bytes to load at `CODE`, and the IVT offsets.
pub struct Assembled {
    pub code: Vec<u8>,
    /// Offset (within segment 0) of each vector's stub.
    pub stubs: Vec<u16>,
    /// Offset of the main loop (for listings and tests).
    pub main_loop: u16,
}

/// Write eax to an APIC register: its x2APIC MSR `msr`, or `[fs:off]` in
/// an xAPIC L2 (`CTL_XAPIC` set). Clobbers ecx, edx and the flags. Ends
/// with a `nop`, so that a label may follow.
fn apic_write(a: &mut CodeAssembler, msr: u32, off: u16) -> Result<(), IcedError> {
    let mut xapic = a.create_label();
    let mut done = a.create_label();
    a.cmp(dword_ptr(u32::from(CTL_XAPIC)), 0)?;
    a.jne(xapic)?;
    a.mov(ecx, msr)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.jmp(done)?;
    a.set_label(&mut xapic)?;
    a.mov(dword_ptr(u32::from(off)).fs(), eax)?;
    a.set_label(&mut done)?;
    a.nop()
}

fn apic_write_imm(a: &mut CodeAssembler, msr: u32, off: u16, value: u32) -> Result<(), IcedError> {
    a.mov(eax, value)?;
    apic_write(a, msr, off)
}

pub fn assemble() -> Result<Assembled, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    let mut main = a.create_label();
    let mut halted = a.create_label();
    let mut alternate = a.create_label();
    let mut park = a.create_label();
    let mut common = a.create_label();

    // --- setup
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(sp, u32::from(STACK_TOP))?;
    // x2APIC: IA32_APIC_BASE |= EN | EXTD (xAPIC -> x2APIC is a legal
    // transition); an xAPIC L2 keeps the reset state (EN set, xAPIC mode)
    let mut xapic_setup = a.create_label();
    a.cmp(dword_ptr(u32::from(CTL_XAPIC)), 0)?;
    a.jne(xapic_setup)?;
    a.mov(ecx, MSR_APIC_BASE)?;
    a.rdmsr()?;
    a.or(eax, APIC_BASE_EN | APIC_BASE_EXTD)?;
    a.wrmsr()?;
    a.set_label(&mut xapic_setup)?;
    apic_write_imm(&mut a, MSR_X2APIC_TPR, XAPIC_TPR, 0)?;
    apic_write_imm(
        &mut a,
        MSR_X2APIC_SVR,
        XAPIC_SVR,
        0x100 | u32::from(SPURIOUS_VECTOR),
    )?;
    apic_write_imm(&mut a, MSR_X2APIC_TIMER_DIV, XAPIC_TIMER_DIV, 0b1011)?; // divide by 1
    apic_write_imm(
        &mut a,
        MSR_X2APIC_LVT_TIMER,
        XAPIC_LVT_TIMER,
        u32::from(TIMER_VECTOR),
    )?; // one-shot, unmasked
        // the APIC ID: x2APIC's MSR, or xAPIC's ID register bits 31:24
    let mut xapic_id = a.create_label();
    let mut have_id = a.create_label();
    a.cmp(dword_ptr(u32::from(CTL_XAPIC)), 0)?;
    a.jne(xapic_id)?;
    a.mov(ecx, MSR_X2APIC_ID)?;
    a.rdmsr()?;
    a.jmp(have_id)?;
    a.set_label(&mut xapic_id)?;
    a.mov(eax, dword_ptr(u32::from(XAPIC_ID)).fs())?;
    a.shr(eax, 24)?;
    a.set_label(&mut have_id)?;
    a.mov(dword_ptr(CTL_X2APIC_ID), eax)?;
    a.mov(ecx, MSR_APIC_BASE)?;
    a.rdmsr()?;
    a.mov(dword_ptr(CTL_APIC_BASE), eax)?;
    a.mov(dx, u32::from(PORT_READY))?;
    a.out(dx, eax)?;
    a.sti()?;

    // --- main loop: esi = request generation seen, ebx = mode. Interrupts
    // are enabled throughout, except between a halt's last check and its
    // `hlt` (see `halted`); those checks jump back here with them off.
    a.set_label(&mut main)?;
    a.sti()?;
    a.inc(dword_ptr(CTL_ITER))?;
    // an ipi request (CTL_IPI_REQ != CTL_IPI_ACK): send CTL_IPI_COUNT IPIs
    // of CTL_IPI_VECTOR to ourselves through the ICR, waiting (at most
    // IPI_SPIN pauses) for each to be taken before the next, then ack.
    // edi = generation, ebp = left to send, bx = the vector's counter,
    // esi = its value before the send; esi and ebx are reloaded below.
    let mut ipi_next = a.create_label();
    let mut ipi_wait = a.create_label();
    let mut ipi_sent = a.create_label();
    let mut ipi_done = a.create_label();
    let mut no_ipi = a.create_label();
    a.mov(edi, dword_ptr(CTL_IPI_REQ))?;
    a.cmp(edi, dword_ptr(CTL_IPI_ACK))?;
    a.je(no_ipi)?;
    a.mov(ebp, dword_ptr(CTL_IPI_COUNT))?;
    a.movzx(ebx, byte_ptr(CTL_IPI_VECTOR))?;
    a.shl(bx, 2)?;
    a.add(bx, u32::from(COUNTERS))?;
    a.set_label(&mut ipi_next)?;
    a.test(ebp, ebp)?;
    a.jz(ipi_done)?;
    a.mov(esi, dword_ptr(bx))?;
    // fixed, physical, no shorthand, destination: ourselves. xAPIC: the
    // destination in ICR high bits 31:24, then the write of ICR low sends
    let mut xapic_icr = a.create_label();
    let mut icr_sent = a.create_label();
    a.cmp(dword_ptr(u32::from(CTL_XAPIC)), 0)?;
    a.jne(xapic_icr)?;
    a.mov(ecx, MSR_X2APIC_ICR)?;
    a.movzx(eax, byte_ptr(CTL_IPI_VECTOR))?;
    a.mov(edx, dword_ptr(CTL_X2APIC_ID))?;
    a.wrmsr()?;
    a.jmp(icr_sent)?;
    a.set_label(&mut xapic_icr)?;
    a.mov(eax, dword_ptr(CTL_X2APIC_ID))?;
    a.shl(eax, 24)?;
    a.mov(dword_ptr(u32::from(XAPIC_ICR_HI)).fs(), eax)?;
    a.movzx(eax, byte_ptr(CTL_IPI_VECTOR))?;
    a.mov(dword_ptr(u32::from(XAPIC_ICR_LO)).fs(), eax)?;
    a.set_label(&mut icr_sent)?;
    a.inc(dword_ptr(CTL_IPI_SENT))?;
    a.mov(eax, IPI_SPIN)?;
    a.set_label(&mut ipi_wait)?;
    a.cmp(esi, dword_ptr(bx))?;
    a.jne(ipi_sent)?;
    a.pause()?;
    a.dec(eax)?;
    a.jnz(ipi_wait)?;
    a.set_label(&mut ipi_sent)?;
    a.dec(ebp)?;
    a.jmp(ipi_next)?;
    a.set_label(&mut ipi_done)?;
    a.mov(dword_ptr(CTL_IPI_ACK), edi)?;
    a.set_label(&mut no_ipi)?;
    a.mov(esi, dword_ptr(CTL_REQ))?;
    a.mov(ebx, dword_ptr(CTL_MODE))?;
    a.mov(dword_ptr(CTL_ACK), esi)?;
    a.cmp(ebx, MODE_HALTED)?;
    a.je(halted)?;
    a.cmp(ebx, MODE_ALTERNATE)?;
    a.je(alternate)?;
    a.cmp(ebx, MODE_PARK)?;
    a.je(park)?;
    // running (and anything unknown)
    a.pause()?;
    a.jmp(main)?;

    // A halt checks for a new request with interrupts off, then `sti; hlt`:
    // the agent writes the request before it sends the kick, so a kick
    // that arrives after the check stays pending through `sti`'s
    // one-instruction interrupt shadow and wakes the `hlt`. Checked with
    // interrupts on, a kick taken between the check and the `hlt` would be
    // counted and then leave the L2 halted with nothing left to wake it.
    a.set_label(&mut halted)?;
    a.cli()?;
    a.cmp(esi, dword_ptr(CTL_REQ))?;
    a.jne(main)?;
    a.inc(dword_ptr(CTL_HALTS))?;
    a.sti()?;
    a.hlt()?;
    a.jmp(main)?;

    // interrupts stay enabled: what arrives while parked is pending in the
    // LAPIC and is injected straight away at the next KVM_RUN
    a.set_label(&mut park)?;
    a.mov(dx, u32::from(PORT_PARK))?;
    a.out(dx, al)?;
    a.jmp(main)?;

    // alternate: spin until the timer fires, then halt until it fires again;
    // a new request (esi != [CTL_REQ]) ends either phase at once
    let timer = counter(TIMER_VECTOR);
    let mut spin = a.create_label();
    let mut nap = a.create_label();
    a.set_label(&mut alternate)?;
    a.mov(edi, dword_ptr(timer))?;
    a.mov(eax, dword_ptr(CTL_PERIOD))?;
    apic_write(&mut a, MSR_X2APIC_TIMER_INIT, XAPIC_TIMER_INIT)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(esi, dword_ptr(CTL_REQ))?;
    a.jne(main)?;
    a.cmp(edi, dword_ptr(timer))?;
    a.je(spin)?;
    a.mov(edi, dword_ptr(timer))?;
    a.mov(eax, dword_ptr(CTL_PERIOD))?;
    apic_write(&mut a, MSR_X2APIC_TIMER_INIT, XAPIC_TIMER_INIT)?;
    // the nap's checks, like `halted`'s, run with interrupts off: the
    // one-shot timer may fire (and be taken) before the `hlt` is reached
    // when L1 preempts the L2 for longer than a period
    a.set_label(&mut nap)?;
    a.cli()?;
    a.cmp(esi, dword_ptr(CTL_REQ))?;
    a.jne(main)?;
    a.cmp(edi, dword_ptr(timer))?;
    a.jne(main)?;
    a.inc(dword_ptr(CTL_HALTS))?;
    a.sti()?;
    a.hlt()?;
    a.jmp(nap)?;

    // --- one stub per vector, then the common tail
    let mut stubs = Vec::with_capacity(256);
    for v in 0..=255u8 {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.inc(dword_ptr(counter(v)))?;
        a.push(i32::from(v))?;
        a.jmp(common)?;
        stubs.push(l);
    }
    a.set_label(&mut common)?;
    a.push(eax)?;
    a.push(ecx)?;
    a.push(edx)?;
    a.push(ebx)?;
    a.push(edi)?;
    a.push(ebp)?;
    a.mov(bp, sp)?;
    a.push(es)?;
    // bx = the ack entry of the vector pushed by the stub, if it has one
    let mut eoi = a.create_label();
    let mut second = a.create_label();
    a.mov(bx, word_ptr(bp + 24))?;
    a.and(bx, 0xff)?;
    a.sub(bx, i32::from(ACK_FIRST_VECTOR))?;
    a.cmp(bx, i32::from(ACK_VECTORS))?;
    a.jae(eoi)?;
    a.shl(bx, 4)?;
    a.add(bx, i32::from(ACKS))?;
    for (entry, next) in [(0u16, &mut second), (8, &mut eoi)] {
        a.mov(ax, word_ptr(bx + i32::from(entry)))?;
        a.test(ax, ax)?;
        a.jz(*next)?;
        a.mov(es, ax)?;
        a.mov(di, word_ptr(bx + i32::from(entry + 2)))?;
        a.mov(eax, dword_ptr(bx + i32::from(entry + 4)))?;
        a.mov(dword_ptr(di).es(), eax)?;
        if entry == 0 {
            a.set_label(next)?;
        }
    }
    a.set_label(&mut eoi)?;
    a.xor(eax, eax)?;
    apic_write(&mut a, MSR_X2APIC_EOI, XAPIC_EOI)?;
    a.inc(dword_ptr(CTL_EOIS))?;
    a.pop(es)?;
    a.pop(ebp)?;
    a.pop(edi)?;
    a.pop(ebx)?;
    a.pop(edx)?;
    a.pop(ecx)?;
    a.pop(eax)?;
    a.add(sp, 2)?;
    a.iret()?;

    let res = a.assemble_options(
        u64::from(CODE),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let ip = |l: &CodeLabel| -> Result<u16, IcedError> {
        let v = res.label_ip(l)?;
        Ok(u16::try_from(v).expect("label beyond 64 KiB"))
    };
    let stubs = stubs.iter().map(ip).collect::<Result<Vec<_>, _>>()?;
    let main_loop = ip(&main)?;
    Ok(Assembled {
        code: res.inner.code_buffer,
        stubs,
        main_loop,
    })
}
