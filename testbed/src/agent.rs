//! The guest agent binary, built statically by build.rs and embedded here.

use std::io::Write;
use std::path::{Path, PathBuf};

pub static AGENT: &[u8] = include_bytes!(env!("TESTBED_AGENT_PATH"));

/// Writes the agent into `dir` (executable) and returns its path.
pub fn write_to(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("testbed-agent");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(&path)?;
    file.write_all(AGENT)?;
    Ok(path)
}
