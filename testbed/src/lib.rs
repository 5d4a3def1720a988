//! The testbed: scenario files in, compared reports out. See ARCHITECTURE.md
//! for the layers; `main.rs` is only the command line.
pub mod agent;
pub mod bench;
pub mod bisect;
pub mod bisect_cmd;
pub mod bootbench;
pub mod gitbisect;
pub mod lost_wakeup;
pub mod matrix;
pub mod nested;
pub mod plan;
pub mod qemu;
pub mod regression;
pub mod report;
pub mod restore;
pub mod run;
pub mod runner;
pub mod scaling;
pub mod scenario;
pub mod selftests;
pub mod summary;
pub mod ui;
pub mod variant;
