//! Tests against a real QEMU (`qemu-system-x86_64`).
//!
//! Gated: they run only with `TESTBED_VM_TESTS=1`, otherwise they return
//! early. Every QEMU is owned by a [`Qemu`] guard that kills and reaps it on
//! drop, and lives in its own temporary directory.
//!
//! Hot-unplug: PCIe unplug needs the guest OS to acknowledge (attention
//! button), and no guest kernel is used here, so the PCIe case asserts the
//! clear timeout error; completion of `device_del` (DEVICE_DELETED) is tested
//! with a USB device on `qemu-xhci`, which QEMU unplugs without the guest.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qmp_client::qapi::qmp::{self, Event, RunState};
use qmp_client::{PciAddress, Qmp, QmpError};
use tempfile::TempDir;
use tokio::sync::mpsc::UnboundedReceiver;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn enabled() -> bool {
    if std::env::var("TESTBED_VM_TESTS").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set TESTBED_VM_TESTS=1");
        false
    }
}

/// A QEMU child process; killed and waited for on drop.
struct Qemu {
    child: Child,
    dir: TempDir,
}

impl Qemu {
    fn spawn(args: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn_in(&dir, args);
        Qemu { child, dir }
    }

    fn spawn_in(dir: &TempDir, args: &[&str]) -> Child {
        let sock = dir.path().join("qmp.sock");
        let stderr = File::create(dir.path().join("qemu.stderr")).expect("stderr file");
        Command::new(QEMU)
            .args(["-nodefaults", "-display", "none"])
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn qemu")
    }

    fn machine_none() -> Qemu {
        Self::spawn(&["-machine", "none"])
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    async fn connect(&self) -> Qmp {
        match Qmp::connect(&self.sock(), CONNECT_TIMEOUT).await {
            Ok(q) => q,
            Err(e) => panic!("connect: {e}; qemu stderr: {}", self.stderr()),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default()
    }

    /// Waits for the child to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Next event, failing the test after `timeout`.
async fn next_event(rx: &mut UnboundedReceiver<Event>, timeout: Duration) -> Event {
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event channel closed"),
        Err(_) => panic!("no event within {timeout:?}"),
    }
}

/// Every event already queued, without waiting.
fn queued_events(rx: &mut UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::STOP { .. } => "STOP",
        Event::RESUME { .. } => "RESUME",
        Event::SHUTDOWN { .. } => "SHUTDOWN",
        Event::DEVICE_DELETED { .. } => "DEVICE_DELETED",
        Event::RESET { .. } => "RESET",
        _ => "other",
    }
}

#[tokio::test]
async fn connect_to_missing_socket_times_out() {
    // Needs no QEMU, so it is not gated.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-listens.sock");
    let timeout = Duration::from_millis(400);
    let start = Instant::now();
    let err = Qmp::connect(&path, timeout).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "took too long: {elapsed:?}"
    );
    match &err {
        QmpError::Connect { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
        }
        other => panic!("expected Connect error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(msg.contains("not ready after"), "{msg}");
}

#[tokio::test]
async fn connect_retries_until_qemu_creates_socket() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let connect = tokio::spawn(async move { Qmp::connect(&sock, CONNECT_TIMEOUT).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Started only now: the client must have been retrying meanwhile.
    let child = Qemu::spawn_in(&dir, &["-machine", "none"]);
    let _qemu = Qemu { child, dir };
    let qmp = connect.await.unwrap().expect("connect after late start");
    let status = qmp.execute(qmp::query_status {}).await.unwrap();
    assert_eq!(status.status, RunState::running);
}

#[tokio::test]
async fn execute_typed_commands() {
    if !enabled() {
        return;
    }
    let qemu = Qemu::machine_none();
    let qmp = qemu.connect().await;
    assert_eq!(qmp.qemu_version().qemu.major, 10);

    let version = qmp.execute(qmp::query_version {}).await.unwrap();
    assert_eq!(version.qemu.major, qmp.qemu_version().qemu.major);

    // Concurrent callers on one session (qapi serializes them).
    let (a, b, c) = tokio::join!(
        qmp.execute(qmp::query_status {}),
        qmp.execute(qmp::query_name {}),
        qmp.execute(qmp::query_status {}),
    );
    assert_eq!(a.unwrap().status, RunState::running);
    b.unwrap();
    assert!(c.unwrap().running);
}

#[tokio::test]
async fn events_arrive_in_order_none_dropped() {
    if !enabled() {
        return;
    }
    let qemu = Qemu::machine_none();
    let mut qmp = qemu.connect().await;

    // Events before take_events() must be buffered, not lost.
    qmp.execute(qmp::stop {}).await.unwrap();
    qmp.execute(qmp::cont {}).await.unwrap();

    let mut rx = qmp.take_events().expect("first take");
    assert!(qmp.take_events().is_none(), "receiver is handed out once");

    for _ in 0..20 {
        qmp.execute(qmp::stop {}).await.unwrap();
        qmp.execute(qmp::cont {}).await.unwrap();
    }
    // QEMU sends STOP/RESUME before the command's response, i.e. while the
    // command is in flight; each must already be queued once it returned.
    let events = queued_events(&mut rx);
    let names: Vec<_> = events.iter().map(event_name).collect();
    let expected: Vec<_> = std::iter::repeat_n(["STOP", "RESUME"], 21)
        .flatten()
        .collect();
    assert_eq!(names, expected);

    let stamps: Vec<_> = events
        .iter()
        .map(|e| {
            // qapi's Timestamp has private fields; read them via serde.
            let t = serde_json::to_value(e.timestamp()).unwrap();
            (
                t["seconds"].as_u64().unwrap(),
                t["microseconds"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps out of order: {stamps:?}"
    );
}

#[tokio::test]
async fn command_error_carries_qemu_class_and_description() {
    if !enabled() {
        return;
    }
    let qemu = Qemu::machine_none();
    let qmp = qemu.connect().await;

    let err = qmp
        .execute(qmp::device_del {
            id: "no-such-dev".into(),
        })
        .await
        .unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(*command, "device_del");
            assert_eq!(*class, qmp_client::qapi::ErrorClass::DeviceNotFound);
            assert!(desc.contains("no-such-dev"), "{desc}");
        }
        other => panic!("expected Command error, got {other:?}"),
    }
    assert!(err.to_string().starts_with("device_del failed: "), "{err}");

    // Same through the helper (fails before waiting for any event).
    let err = qmp
        .device_del("no-such-dev", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err:?}");

    // The session is still usable after errors.
    qmp.execute(qmp::query_status {}).await.unwrap();
}

#[tokio::test]
async fn pci_address_of_device_on_bus_0() {
    if !enabled() {
        return;
    }
    let qemu = Qemu::spawn(&["-machine", "q35", "-device", "edu,id=dev0", "-S"]);
    let qmp = qemu.connect().await;

    let addr = qmp.pci_address("dev0").await.unwrap();
    assert_eq!((addr.domain, addr.bus, addr.function), (0, 0, 0));

    // Cross-check against the raw query-pci answer.
    let buses = qmp.execute(qmp::query_pci {}).await.unwrap();
    let raw = buses
        .iter()
        .flat_map(|b| &b.devices)
        .find(|d| d.qdev_id == "dev0")
        .expect("dev0 in query-pci");
    assert_eq!(i64::from(addr.bus), raw.bus);
    assert_eq!(i64::from(addr.slot), raw.slot);
    assert_eq!(i64::from(addr.function), raw.function);
    assert_eq!(addr.to_string(), format!("0000:00:{:02x}.0", raw.slot));
    assert_eq!(addr.to_string().parse::<PciAddress>().unwrap(), addr);

    let err = qmp.pci_address("nope").await.unwrap_err();
    assert!(
        matches!(&err, QmpError::NoSuchDevice(id) if id == "nope"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "no such device: nope");
}

#[tokio::test]
async fn pci_address_behind_bridge() {
    if !enabled() {
        return;
    }
    // Bridges get their secondary bus number from firmware, so let SeaBIOS
    // run (no boot device needed); until then the device is not reachable,
    // and while SeaBIOS scans behind the port its secondary bus reads 0xff.
    let qemu = Qemu::spawn(&[
        "-machine",
        "q35",
        "-device",
        "pcie-root-port,id=rp0,chassis=1",
        "-device",
        "edu,id=dev1,bus=rp0",
    ]);
    let qmp = qemu.connect().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        match qmp.pci_address("dev1").await {
            Ok(a) if a.bus != 0 && a.bus != 0xff => break a,
            Ok(_) | Err(QmpError::NoSuchDevice(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("dev1 behind rp0 not resolved: {other:?}"),
        }
    };
    assert_eq!(
        addr,
        PciAddress {
            domain: 0,
            bus: 1,
            slot: 0,
            function: 0
        }
    );
    assert_eq!(addr.to_string(), "0000:01:00.0");
    let port = qmp.pci_address("rp0").await.unwrap();
    assert_eq!(port.bus, 0);
}

#[tokio::test]
async fn device_add_and_del_completes_with_event_kept_in_stream() {
    if !enabled() {
        return;
    }
    // USB unplug completes in QEMU without guest cooperation.
    let qemu = Qemu::spawn(&["-machine", "q35", "-device", "qemu-xhci,id=xhci", "-S"]);
    let mut qmp = qemu.connect().await;
    let mut rx = qmp.take_events().unwrap();

    qmp.device_add("usb-kbd", "kbd1", [("bus", "xhci.0")])
        .await
        .unwrap();
    let qom = qmp
        .execute(qmp::qom_list {
            path: "/machine/peripheral".into(),
        })
        .await
        .unwrap();
    assert!(qom.iter().any(|p| p.name == "kbd1"), "kbd1 not plugged");

    // A bad driver is a command error.
    let err = qmp
        .device_add(
            "no-such-driver",
            "bad1",
            qmp_client::qapi::Dictionary::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err:?}");

    qmp.device_del("kbd1", Duration::from_secs(10))
        .await
        .unwrap();

    // device_del must not have stolen the event from the public stream.
    let deleted = loop {
        match next_event(&mut rx, Duration::from_secs(5)).await {
            Event::DEVICE_DELETED { data, .. } if data.device.as_deref() == Some("kbd1") => {
                break data
            }
            _ => continue,
        }
    };
    assert_eq!(deleted.path, "/machine/peripheral/kbd1");

    let qom = qmp
        .execute(qmp::qom_list {
            path: "/machine/peripheral".into(),
        })
        .await
        .unwrap();
    assert!(!qom.iter().any(|p| p.name == "kbd1"), "kbd1 still present");
}

#[tokio::test]
async fn pcie_hot_unplug_without_guest_times_out_clearly() {
    if !enabled() {
        return;
    }
    let qemu = Qemu::spawn(&[
        "-machine",
        "q35",
        "-device",
        "edu,id=dev0",
        "-device",
        "pcie-root-port,id=rp0,chassis=1",
        "-S",
    ]);
    let mut qmp = qemu.connect().await;
    let mut rx = qmp.take_events().unwrap();

    // q35's root bus is not hot-pluggable; a root port is.
    let err = qmp
        .device_add("edu", "hp0", [("bus", "pcie.0")])
        .await
        .unwrap_err();
    match &err {
        QmpError::Command { desc, .. } => assert!(desc.contains("hotplug"), "{desc}"),
        other => panic!("expected Command error, got {other:?}"),
    }
    qmp.device_add("edu", "hp1", [("bus", "rp0")])
        .await
        .unwrap();

    // The guest (paused, and without an OS anyway) never acks the unplug.
    let timeout = Duration::from_millis(1500);
    let err = qmp.device_del("hp1", timeout).await.unwrap_err();
    match &err {
        QmpError::Timeout { after, .. } => assert_eq!(*after, timeout),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "timed out after 1.5s waiting for DEVICE_DELETED of hp1"
    );
    assert!(
        !queued_events(&mut rx)
            .iter()
            .any(|e| matches!(e, Event::DEVICE_DELETED { .. })),
        "unexpected DEVICE_DELETED"
    );
    // The session is fine after a timeout.
    qmp.execute(qmp::query_status {}).await.unwrap();
}

#[tokio::test]
async fn quit_makes_qemu_exit() {
    if !enabled() {
        return;
    }
    let mut qemu = Qemu::machine_none();
    let mut qmp = qemu.connect().await;
    let mut rx = qmp.take_events().unwrap();

    qmp.quit().await.unwrap();
    let status = qemu
        .wait_exit(Duration::from_secs(10))
        .expect("qemu did not exit after quit");
    assert!(status.success(), "qemu exit status {status}");

    // SHUTDOWN came through, then the channel closed with the session.
    let events: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::SHUTDOWN { .. })),
        "no SHUTDOWN in {events:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "event channel should close, got {end:?}"
    );
}

#[tokio::test]
async fn killed_qemu_gives_connection_closed() {
    if !enabled() {
        return;
    }
    let mut qemu = Qemu::machine_none();
    let mut qmp = qemu.connect().await;
    let mut rx = qmp.take_events().unwrap();

    qemu.child.kill().unwrap();
    qemu.child.wait().unwrap();
    // The event channel closes when the socket does.
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "event channel should close, got {end:?}"
    );

    let err = qmp.execute(qmp::query_status {}).await.unwrap_err();
    assert!(matches!(err, QmpError::ConnectionClosed { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("qmp connection closed"),
        "{err}"
    );
    let err = qmp
        .device_del("x", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::ConnectionClosed { .. }), "{err:?}");
}
