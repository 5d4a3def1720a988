//! Builds the guest agent as a static binary and hands its path to the
//! testbed, which embeds it: one `testbed` executable carries everything it
//! puts into a guest.
//!
//! The agent is built by a nested cargo in its own target directory: the
//! outer build holds the lock on its own, and the static flag must not reach
//! proc-macros or build scripts (a crt-static proc-macro cannot be built), which
//! `--target` guarantees.
//!
//! `TESTBED_AGENT=/path/to/testbed-agent` skips the nested build.

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo:rerun-if-env-changed=TESTBED_AGENT");
    if let Some(prebuilt) = std::env::var_os("TESTBED_AGENT") {
        println!(
            "cargo:rustc-env=TESTBED_AGENT_PATH={}",
            PathBuf::from(prebuilt).display()
        );
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    for dir in [
        "guest-agent/src",
        "guest-agent/Cargo.toml",
        "wire/src",
        "wire/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // Shared by every profile of the outer build, so debug and release builds
    // of the testbed reuse one agent build.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "-p",
            "guest-agent",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    // Variables the outer cargo set for this build script would leak into
    // the nested build and change what it builds.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE")
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || key == "CARGO_ENCODED_RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC");
    // The agent is unpacked into guest RAM at every boot, and under TCG that
    // costs about 0.1 s per MB: ship it without symbols. (Set after the loop
    // above, which drops every CARGO_* variable.)
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    let status = cmd.status().expect("running cargo for the guest agent");
    assert!(status.success(), "building the guest agent failed");
    let agent = target_dir
        .join(TARGET)
        .join("release")
        .join("testbed-agent");
    assert!(agent.exists(), "no agent at {}", agent.display());
    println!("cargo:rustc-env=TESTBED_AGENT_PATH={}", agent.display());
}
