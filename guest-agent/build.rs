//! Assembles the L2 program (`src/l2/program.rs`) with iced-x86 and writes
//! its bytes and IVT table to `$OUT_DIR/l2_program.rs`. The program source
//! lives under `src/` so that the testbed's build script, which watches
//! `guest-agent/src`, rebuilds the agent when it changes.

#[path = "src/l2/layout.rs"]
mod layout;
#[path = "src/l2/program.rs"]
mod program;

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/l2/layout.rs");
    println!("cargo:rerun-if-changed=src/l2/program.rs");
    let p = program::assemble().expect("assembling the L2 program");
    let end = usize::from(layout::CODE) + p.code.len();
    assert!(
        end <= usize::from(layout::STACK_TOP) - 0x1000,
        "L2 program too large: ends at {end:#x}"
    );
    let mut out = String::new();
    writeln!(out, "/// The L2 program's bytes, loaded at `layout::CODE`.").unwrap();
    writeln!(out, "pub const PROGRAM: &[u8] = &{:?};", p.code).unwrap();
    writeln!(
        out,
        "/// Offset of each vector's interrupt stub (the IVT entries, segment 0)."
    )
    .unwrap();
    writeln!(out, "pub const STUBS: [u16; 256] = {:?};", p.stubs).unwrap();
    writeln!(out, "/// Offset of the main loop.").unwrap();
    writeln!(out, "pub const MAIN_LOOP: u16 = {};", p.main_loop).unwrap();
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(dir.join("l2_program.rs"), out).expect("writing l2_program.rs");
}
