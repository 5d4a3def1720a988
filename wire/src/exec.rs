//! Running a program in L1 for the host (`testbed selftests`): the job, its
//! streamed output and how it ended.
//!
//! The host sends [`HostMessage::Exec`](crate::HostMessage::Exec); the agent
//! answers with [`AgentMessage::ExecOutput`](crate::AgentMessage::ExecOutput)
//! lines while the program runs, a `Progress` heartbeat at least every
//! [`HEARTBEAT_SECS`](crate::HEARTBEAT_SECS) while it is silent, and one
//! [`AgentMessage::Exited`](crate::AgentMessage::Exited) at the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most output bytes the agent forwards for one program; the rest is
/// counted and dropped (the console keeps nothing of it either).
pub const MAX_EXEC_OUTPUT: usize = 256 * 1024;

/// One program to run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecJob {
    /// Name for the console and the agent's messages, e.g. `kvm:x86/xapic_ipi_test`.
    pub name: String,
    /// Program (absolute path in L1) and its arguments.
    pub argv: Vec<String>,
    /// Added to the agent's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; `/` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The agent kills the program's whole process group after this many
    /// seconds and reports [`ExecStatus::TimedOut`].
    pub timeout_secs: u64,
    /// PCI functions (`0000:00:04.0`) to bind to vfio-pci before the program
    /// starts (left bound afterwards); a failed bind is reported as
    /// [`ExecStatus::SetupFailed`] and the program does not run.
    #[serde(default)]
    pub vfio_pci: Vec<String>,
    /// Trace events (`system:event`, e.g. `kvm:kvm_avic_doorbell`) the
    /// agent counts from just before the program starts until it ended;
    /// the counts come back in [`ExecResult::event_counts`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub count_events: Vec<String>,
}

/// How often each requested trace event fired while a program ran.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventCounts {
    /// Per event that could be enabled (`kvm:kvm_avic_doorbell`), its count.
    pub counts: BTreeMap<String, u64>,
    /// Events that could not be counted, each with the reason (`kvm:kvm_avic_ga_log: not in this kernel`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
    /// Events the trace buffer dropped (of any counted kind): when not 0,
    /// the counts are lower bounds.
    #[serde(default)]
    pub lost: u64,
}

/// How a program ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExecStatus {
    /// It exited with this code.
    Exited { code: i32 },
    /// A signal killed it (not the agent's timeout).
    Signaled { signal: i32 },
    /// It ran longer than `timeout_secs`; the agent killed its process group.
    TimedOut,
    /// It could not be started (no such file, not executable, ...).
    SpawnFailed { error: String },
    /// What the job asked to prepare failed, e.g. a vfio-pci bind.
    SetupFailed { error: String },
}

/// The end of an [`ExecJob`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExecResult {
    pub status: ExecStatus,
    /// Wall time in L1, spawn to exit.
    pub millis: u64,
    /// Output bytes beyond [`MAX_EXEC_OUTPUT`] that were dropped.
    #[serde(default)]
    pub dropped_bytes: u64,
    /// Headlines of the kernel warnings logged while it ran (see
    /// [`kernel_warning`](crate::kernel_warning)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_warnings: Vec<String>,
    /// The trace events of [`ExecJob::count_events`]; `None` when none were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_counts: Option<EventCounts>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentMessage, HostMessage};

    #[test]
    fn exec_messages_round_trip() {
        let job = HostMessage::Exec(ExecJob {
            name: "kvm:x86/xapic_ipi_test".into(),
            argv: vec![
                "/selftests/kvm/x86/xapic_ipi_test".into(),
                "-s".into(),
                "5".into(),
            ],
            env: vec![("VFIO_SELFTESTS_BDF".into(), "0000:00:04.0".into())],
            cwd: Some("/selftests/kvm".into()),
            timeout_secs: 300,
            vfio_pci: vec!["0000:00:04.0".into()],
            count_events: vec!["kvm:kvm_avic_doorbell".into()],
        });
        let line = serde_json::to_string(&job).unwrap();
        assert!(line.contains(r#""type":"exec""#), "{line}");
        assert_eq!(serde_json::from_str::<HostMessage>(&line).unwrap(), job);
        for status in [
            ExecStatus::Exited { code: 4 },
            ExecStatus::Signaled { signal: 6 },
            ExecStatus::TimedOut,
            ExecStatus::SpawnFailed {
                error: "ENOENT".into(),
            },
            ExecStatus::SetupFailed {
                error: "bind: EBUSY".into(),
            },
        ] {
            let m = AgentMessage::Exited(ExecResult {
                status,
                millis: 12,
                dropped_bytes: 0,
                kernel_warnings: vec![],
                event_counts: None,
            });
            let line = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<AgentMessage>(&line).unwrap(), m);
        }
        let counted = AgentMessage::Exited(ExecResult {
            status: ExecStatus::Exited { code: 0 },
            millis: 12,
            dropped_bytes: 0,
            kernel_warnings: vec![],
            event_counts: Some(EventCounts {
                counts: [("kvm:kvm_avic_doorbell".to_owned(), 7)].into(),
                unavailable: vec!["kvm:kvm_avic_ga_log: not in this kernel".into()],
                lost: 0,
            }),
        });
        let line = serde_json::to_string(&counted).unwrap();
        assert!(
            line.contains(r#""counts":{"kvm:kvm_avic_doorbell":7}"#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<AgentMessage>(&line).unwrap(),
            counted
        );
        let out = AgentMessage::ExecOutput {
            line: "ok 1 selftests".into(),
        };
        let line = serde_json::to_string(&out).unwrap();
        assert_eq!(line, r#"{"type":"exec-output","line":"ok 1 selftests"}"#);
    }

    #[test]
    fn a_job_missing_its_timeout_is_refused() {
        let bad = r#"{"type":"exec","name":"x","argv":["/bin/true"]}"#;
        assert!(serde_json::from_str::<HostMessage>(bad).is_err());
    }
}
