//! Hot-plug steps: the host runs QMP device_del/device_add while the agent
//! waits (and closes the device when vfio-pci's remove asks for it).

use std::thread::sleep;
use std::time::{Duration, Instant};

use wire::{AgentMessage, HostAction, HostMessage};

use super::{JobState, Recv, Runner};
use crate::say;
use crate::vfio::dev_dir;

/// Longest the agent waits for a hot-plugged device to show up in L1.
const REPLUG_TIMEOUT: Duration = Duration::from_secs(20);

impl Runner {
    /// Ask the host to run `action` and wait for it to be done, calling
    /// `meanwhile` about every 20 ms (and sending heartbeats) until then.
    pub(super) fn host_action(
        &mut self,
        index: usize,
        action: HostAction,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<(), String> {
        send(AgentMessage::HostAction { index, action });
        self.last_sent = Instant::now();
        loop {
            meanwhile();
            match recv(Duration::from_millis(20))? {
                None => self.heartbeat(index, send),
                Some(HostMessage::HostActionDone { error: None }) => return Ok(()),
                Some(HostMessage::HostActionDone { error: Some(e) }) => return Err(e),
                Some(other) => return Err(format!("host sent {other:?} while a host action ran")),
            }
        }
    }

    pub(super) fn unplug(
        &mut self,
        st: &mut JobState,
        index: usize,
        device: &str,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        let bdf = st.bdf(device)?;
        let mut released = false;
        let action = HostAction::DeviceDel {
            device: device.to_string(),
        };
        self.host_action(index, action, send, recv, &mut || {
            // vfio-pci's remove waits for us: close the device when asked
            if let Some(pos) = st
                .open
                .iter()
                .position(|(n, d)| n == device && d.release_requested())
            {
                drop(st.open.remove(pos));
                st.forget_device(device);
                released = true;
            }
        })?;
        if released {
            say!("{device}: released to vfio-pci's remove");
        }
        if dev_dir(&bdf).exists() {
            return Err(format!("{device} ({bdf}) still in L1 after DEVICE_DELETED"));
        }
        // the host IRQ lines go with the device
        let lines = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        if let Some(l) = lines.lines().find(|l| l.contains(&format!("({bdf})"))) {
            return Err(format!(
                "{device} is gone but L1 still has its IRQ line: {}",
                l.trim()
            ));
        }
        Ok(())
    }

    pub(super) fn replug(
        &mut self,
        st: &mut JobState,
        index: usize,
        device: &str,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        let bdf = st.bdf(device)?;
        self.host_action(
            index,
            HostAction::DeviceAdd {
                device: device.to_string(),
            },
            send,
            recv,
            &mut || {},
        )?;
        let t0 = Instant::now();
        let dir = dev_dir(&bdf);
        // L1 creates the device before it assigns its BARs; opening it
        // before that fails (pci_enable_device), so wait for BAR0 too
        let bar0_assigned = || {
            std::fs::read_to_string(dir.join("resource"))
                .ok()
                .and_then(|t| {
                    let start = t
                        .lines()
                        .next()?
                        .split_whitespace()
                        .next()?
                        .trim_start_matches("0x")
                        .to_owned();
                    u64::from_str_radix(&start, 16).ok()
                })
                .is_some_and(|start| start != 0)
        };
        while !bar0_assigned() {
            if t0.elapsed() > REPLUG_TIMEOUT {
                return Err(format!(
                    "{device} ({bdf}) did not appear in L1 within {REPLUG_TIMEOUT:?} of device_add"
                ));
            }
            self.heartbeat(index, send);
            sleep(Duration::from_millis(20));
        }
        say!(
            "{device} ({bdf}) back after {} ms",
            t0.elapsed().as_millis()
        );
        Ok(())
    }
}
