//! The testbed: scenario files in, compared reports out.
pub mod report;
pub mod scenario;
