//! Async QMP client for the irqbypass testbed, built on the [`qapi`] crate.
//!
//! One [`Qmp`] value is one connected, negotiated QMP session on a unix
//! socket. Commands are the typed `qapi::qmp::*` structs; events are
//! `qapi::qmp::Event` values delivered, in order and without loss, on the
//! channel returned by [`Qmp::take_events`].
//!
//! # How it sits on `qapi`
//!
//! `qapi::futures::QmpStreamTokio` reads the greeting, then the stream is
//! split into a `QapiService` (writes commands, awaits their responses) and
//! a `QapiEvents` stream (reads every line; routes responses to the waiting
//! command and yields events). A background tokio task drives `QapiEvents`
//! for the whole session and forwards each event to the event channel and to
//! internal waiters (used by [`Qmp::device_del`]). The task is spawned
//! *before* `qmp_capabilities` is sent, so no event can be read and discarded
//! by a foreground command (qapi's own `negotiate()` polls the reader inline
//! and ignores any event it meets).
//!
//! # Deviations from the planned API
//!
//! * [`Qmp::execute`] is bounded on `qapi::qmp::QmpCommand` (every
//!   `qapi::qmp::*` command implements it) instead of `qapi::Command`,
//!   because qapi's QMP sink only accepts QMP commands, and needs
//!   `C: Send + 'static` because each exchange runs in its own task (this
//!   makes it cancel-safe, see below). It takes `&self`.
//! * [`Qmp::device_add`] takes the extra properties as any
//!   `IntoIterator<Item = (K, V)>` with `K: Into<String>`,
//!   `V: Into<serde_json::Value>`, e.g. `[("bus", "rp0")]` or a
//!   `qapi::Dictionary`.
//! * [`Qmp::quit`] waits at most [`QUIT_TIMEOUT`] for the socket to close.
//! * [`Qmp::connect`]'s `timeout` bounds the whole connect + greeting +
//!   negotiation, not only the connect retries.
//!
//! # Known limitations (from `qapi` 0.15, schema of QEMU 9.1)
//!
//! * A message that does not decode into qapi's types (an event QEMU added
//!   after 9.1, e.g. `NETDEV_VHOST_USER_CONNECTED` in 10.0, or an unknown
//!   enum value inside event data) ends the session: qapi's line codec
//!   stops after a decode error. Later calls fail with
//!   [`QmpError::ConnectionClosed`] whose reason names the decode error.
//! * qapi does not detect QEMU's `oob` capability (its greeting type cannot
//!   decode it), so commands are sent without ids and serialized: a second
//!   `execute` waits until the first one's response arrived.
//! * Without oob, qapi pairs responses with commands by order only and
//!   keeps the pending command under id 0; a plain `QapiService::execute`
//!   future dropped mid-flight (a caller's timeout) makes the *next*
//!   command panic with "duplicate command id", or when the stray response
//!   arrives first, turns it into a stream error. [`Qmp::execute`] spawns
//!   each exchange as a task to avoid both; stray-response errors are not
//!   treated as fatal by the reader.
//! * `query-pci` has no PCI domain; [`PciAddress::domain`] is always 0.
//!   Bus numbers behind bridges are those programmed by firmware or guest,
//!   so on a guest that never ran (`-S`) they are still 0.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiEvents, QapiService, QmpStreamTokio};
use qapi::qmp::{Event, PciDeviceInfo, QmpCommand};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

mod transcript;
use transcript::{Log, Transcribed};

/// The `qapi` crate this client is built on, re-exported so callers name
/// commands and events from the same version (`qmp_client::qapi::qmp::...`).
pub use qapi;

/// How long [`Qmp::quit`] waits for QEMU to close the socket.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between connect attempts while the socket does not exist yet.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

type Reader = QmpStreamTokio<ReadHalf<Transcribed<UnixStream>>>;
type Writer = QmpStreamTokio<WriteHalf<Transcribed<UnixStream>>>;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected (within the timeout, or at all).
    #[error("connect to qmp socket {} failed: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Greeting or `qmp_capabilities` failed.
    #[error("qmp negotiation failed: {0}")]
    Negotiation(String),
    /// QEMU answered a command with an error.
    #[error("{command} failed: {desc} ({class:?})")]
    Command {
        command: &'static str,
        class: qapi::ErrorClass,
        desc: String,
    },
    /// The session ended (QEMU exited, or the stream became unreadable).
    #[error("qmp connection closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    ConnectionClosed { reason: Option<String> },
    /// An operation did not finish in time.
    #[error("timed out after {after:?} {waiting_for}")]
    Timeout {
        waiting_for: String,
        after: Duration,
    },
    /// No device with this qdev id on any PCI bus.
    #[error("no such device: {0}")]
    NoSuchDevice(String),
    /// The guest refused to release a device (`DEVICE_UNPLUG_GUEST_ERROR`).
    #[error("guest rejected unplug of {0}")]
    UnplugRejected(String),
    /// A reply did not decode into the expected type.
    #[error("qmp protocol error: {0}")]
    Protocol(#[source] io::Error),
    /// Other socket I/O error.
    #[error("qmp i/o error: {0}")]
    Io(#[source] io::Error),
}

/// A PCI address; `Display` gives the Linux sysfs form `0000:00:04.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

/// Error of [`PciAddress::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pci address: {0:?}")]
pub struct PciAddressParseError(String);

impl FromStr for PciAddress {
    type Err = PciAddressParseError;

    /// Parses `DDDD:BB:SS.F` or the short `BB:SS.F` (domain 0), hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PciAddressParseError(s.to_owned());
        let hex = |part: &str, max_len: usize| -> Result<u32, PciAddressParseError> {
            if part.is_empty()
                || part.len() > max_len
                || !part.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        let (head, function) = s.rsplit_once('.').ok_or_else(err)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, slot) = match parts.as_slice() {
            [d, b, s] => (hex(d, 4)?, hex(b, 2)?, hex(s, 2)?),
            [b, s] => (0, hex(b, 2)?, hex(s, 2)?),
            _ => return Err(err()),
        };
        let function = hex(function, 1)?;
        if slot > 0x1f || function > 7 {
            return Err(err());
        }
        Ok(PciAddress {
            domain: domain as u16,
            bus: bus as u8,
            slot: slot as u8,
            function: function as u8,
        })
    }
}

/// State shared between the session handle and its reader task.
#[derive(Default)]
struct Shared {
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    /// Extra receivers of every event (besides the public channel).
    watchers: Vec<UnboundedSender<Event>>,
    /// Set once the reader task stopped; holds the reason if it was an error.
    closed: Option<Option<String>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of every event from now on, or `None` if already closed.
    fn watch(&self) -> Result<UnboundedReceiver<Event>, QmpError> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Err(QmpError::ConnectionClosed {
                reason: reason.clone(),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        inner.watchers.push(tx);
        Ok(rx)
    }

    fn closed(&self) -> Option<Option<String>> {
        self.lock().closed.clone()
    }
}

/// Drives qapi's reader for the whole session: responses are routed to
/// their commands by qapi, events come out here and are fanned out.
async fn pump(mut events: QapiEvents<Reader>, tx: UnboundedSender<Event>, shared: Arc<Shared>) {
    // qapi yields an error for a line that does not decode (its codec then
    // ends the stream, so the next poll gives `None`) and for a response
    // nobody waits for (not fatal: the stream goes on). So keep polling and
    // report the last error as the reason once the stream has ended.
    let mut last_error = None;
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                {
                    let mut inner = shared.lock();
                    inner.watchers.retain(|w| w.send(event.clone()).is_ok());
                }
                // The receiver may have been dropped by the caller; fine.
                let _ = tx.send(event);
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    let reason = last_error;
    {
        let mut inner = shared.lock();
        inner.closed = Some(reason);
        inner.watchers.clear();
    }
    // Dropping the reader fails every command still waiting for a response.
    drop(events);
}

/// One connected, negotiated QMP session.
pub struct Qmp {
    service: QapiService<Writer>,
    shared: Arc<Shared>,
    events: Option<UnboundedReceiver<Event>>,
    reader: JoinHandle<()>,
    greeting: qapi::qmp::QMP,
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("qemu", &self.greeting.version.qemu)
            .field("closed", &self.shared.closed())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect to a QMP unix socket and negotiate capabilities.
    ///
    /// Retries connecting (socket missing or refused) until `timeout`, since
    /// QEMU may not have created the socket yet; the greeting and
    /// `qmp_capabilities` must also complete within `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_inner(path, timeout, None).await
    }

    /// [`connect`](Self::connect), and write a transcript of the session to
    /// `transcript`: one line per message sent (`->`) or received (`<-`),
    /// as it went over the socket, after the seconds since connect. Replies,
    /// events and the greeting are all in it, in arrival order.
    pub async fn connect_with_transcript(
        path: &Path,
        timeout: Duration,
        transcript: Box<dyn std::io::Write + Send>,
    ) -> Result<Qmp, QmpError> {
        Qmp::connect_inner(path, timeout, Some(Log::new(transcript))).await
    }

    async fn connect_inner(
        path: &Path,
        timeout: Duration,
        log: Option<Log>,
    ) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let connect_err = |source| QmpError::Connect {
            path: path.to_owned(),
            source,
        };

        let socket = loop {
            match timeout_at(deadline, UnixStream::connect(path)).await {
                Ok(Ok(socket)) => break socket,
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if Instant::now() + CONNECT_RETRY >= deadline {
                        return Err(connect_err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("not ready after {timeout:?}: {e}"),
                        )));
                    }
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Ok(Err(e)) => return Err(connect_err(e)),
                Err(_) => {
                    return Err(connect_err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("not ready after {timeout:?}"),
                    )))
                }
            }
        };

        let socket = Transcribed::new(socket, log);
        let negotiation = match timeout_at(deadline, QmpStreamTokio::open(socket)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(QmpError::Negotiation(format!("bad greeting: {e}"))),
            Err(_) => {
                return Err(QmpError::Negotiation(format!(
                    "no greeting within {timeout:?}"
                )))
            }
        };
        let greeting = negotiation.capabilities.QMP;
        let (service, events) = negotiation.stream.into_parts();
        // Let the reader stop when `service` (i.e. the Qmp) is dropped.
        let _ = events.release();

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(pump(events, tx, shared.clone()));

        let qmp = Qmp {
            service,
            shared,
            events: Some(rx),
            reader,
            greeting,
        };
        match timeout_at(
            deadline,
            qmp.execute(qapi::qmp::qmp_capabilities { enable: None }),
        )
        .await
        {
            Ok(Ok(_)) => Ok(qmp),
            Ok(Err(e)) => Err(QmpError::Negotiation(e.to_string())),
            Err(_) => Err(QmpError::Negotiation(format!(
                "no qmp_capabilities reply within {timeout:?}"
            ))),
        }
    }

    /// QEMU's version as announced in the QMP greeting.
    pub fn qemu_version(&self) -> &qapi::qmp::VersionInfo {
        &self.greeting.version
    }

    /// Typed execute of any QMP command, e.g.
    /// `qmp.execute(qapi::qmp::query_status {}).await`.
    ///
    /// Cancel-safe: the exchange runs in its own task, so dropping this
    /// future (e.g. on a caller's timeout) lets the response still be
    /// consumed and paired with its command; the next command is sent only
    /// after that response arrived.
    pub async fn execute<C>(&self, cmd: C) -> Result<C::Ok, QmpError>
    where
        C: QmpCommand + Send + 'static,
        C::Ok: Send + 'static,
    {
        if let Some(reason) = self.shared.closed() {
            return Err(QmpError::ConnectionClosed { reason });
        }
        // Without oob ids qapi pairs responses by order and keys every
        // pending command as id 0; a command abandoned mid-flight would make
        // the next one panic ("duplicate command id") or take its response.
        // Running the exchange in a task keeps each one whole.
        let exchange = tokio::spawn(self.service.execute(cmd));
        let res = match exchange.await {
            Ok(res) => res,
            Err(e) => {
                return Err(QmpError::Io(io::Error::other(format!(
                    "qmp command task failed: {e}"
                ))))
            }
        };
        match res {
            Ok(ok) => Ok(ok),
            Err(qapi::ExecuteError::Qapi(e)) => Err(QmpError::Command {
                command: C::NAME,
                class: e.class,
                desc: e.desc,
            }),
            Err(qapi::ExecuteError::Io(e)) => Err(self.io_error(e).await),
        }
    }

    /// Classifies an I/O error from qapi: a dead session becomes
    /// `ConnectionClosed` (with the reader's reason if it had one).
    async fn io_error(&self, e: io::Error) -> QmpError {
        let disconnected = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::NotConnected
        );
        if disconnected {
            // The reader records why it stopped just before it drops qapi's
            // reader (which is what fails pending commands); give it a moment.
            for _ in 0..20 {
                if let Some(reason) = self.shared.closed() {
                    return QmpError::ConnectionClosed { reason };
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return QmpError::ConnectionClosed { reason: None };
        }
        if let Some(reason) = self.shared.closed() {
            return QmpError::ConnectionClosed { reason };
        }
        if e.kind() == io::ErrorKind::InvalidData {
            QmpError::Protocol(e)
        } else {
            QmpError::Io(e)
        }
    }

    /// Every event QEMU sent since connect, in order, none dropped (the
    /// channel is unbounded). Returns the receiver once, then `None`. The
    /// channel closes when the session ends.
    pub fn take_events(&mut self) -> Option<UnboundedReceiver<Event>> {
        self.events.take()
    }

    /// Resolve a `-device ...,id=ID` to its PCI address via `query-pci`,
    /// searching behind bridges too.
    pub async fn pci_address(&self, id: &str) -> Result<PciAddress, QmpError> {
        fn find<'a>(devices: &'a [PciDeviceInfo], id: &str) -> Option<&'a PciDeviceInfo> {
            devices.iter().find_map(|dev| {
                if dev.qdev_id == id {
                    return Some(dev);
                }
                let behind = dev.pci_bridge.as_ref()?.devices.as_deref()?;
                find(behind, id)
            })
        }

        let buses = self.execute(qapi::qmp::query_pci {}).await?;
        let dev = buses
            .iter()
            .find_map(|bus| find(&bus.devices, id))
            .ok_or_else(|| QmpError::NoSuchDevice(id.to_owned()))?;
        let field = |name: &str, value: i64, max: i64| {
            if (0..=max).contains(&value) {
                Ok(value)
            } else {
                Err(QmpError::Protocol(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("query-pci: {id} has {name} {value}"),
                )))
            }
        };
        Ok(PciAddress {
            domain: 0,
            bus: field("bus", dev.bus, 0xff)? as u8,
            slot: field("slot", dev.slot, 0x1f)? as u8,
            function: field("function", dev.function, 7)? as u8,
        })
    }

    /// `device_add driver=DRIVER,id=ID,PROPS...`; `props` may carry `bus`.
    pub async fn device_add<I, K, V>(
        &self,
        driver: &str,
        id: &str,
        props: I,
    ) -> Result<(), QmpError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<serde_json::Value>,
    {
        let cmd = qapi::qmp::device_add::new(
            driver,
            Some(id.to_owned()),
            None,
            props.into_iter().map(|(k, v)| (k.into(), v.into())),
        );
        self.execute(cmd).await.map(drop)
    }

    /// `device_del ID`, then wait up to `timeout` for `DEVICE_DELETED` of
    /// that id. The event is observed through an internal watcher, so it
    /// still appears on the [`take_events`](Self::take_events) channel.
    ///
    /// PCI(e) unplug normally needs the guest to acknowledge; on a guest
    /// that is paused or not listening this ends in [`QmpError::Timeout`]
    /// (the unplug stays pending in QEMU). A `DEVICE_UNPLUG_GUEST_ERROR` for
    /// the id gives [`QmpError::UnplugRejected`].
    pub async fn device_del(&self, id: &str, timeout: Duration) -> Result<(), QmpError> {
        // Watch before sending, so the event cannot slip past.
        let mut watch = self.shared.watch()?;
        self.execute(qapi::qmp::device_del { id: id.to_owned() })
            .await?;

        let wait = async {
            while let Some(event) = watch.recv().await {
                match event {
                    Event::DEVICE_DELETED { data, .. } if data.device.as_deref() == Some(id) => {
                        return Ok(());
                    }
                    Event::DEVICE_UNPLUG_GUEST_ERROR { data, .. }
                        if data.device.as_deref() == Some(id) =>
                    {
                        return Err(QmpError::UnplugRejected(id.to_owned()));
                    }
                    _ => {}
                }
            }
            Err(QmpError::ConnectionClosed {
                reason: self.shared.closed().flatten(),
            })
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(res) => res,
            Err(_) => Err(QmpError::Timeout {
                waiting_for: format!("waiting for DEVICE_DELETED of {id}"),
                after: timeout,
            }),
        }
    }

    /// Send `quit`, then wait (up to [`QUIT_TIMEOUT`]) until QEMU closed the
    /// connection. Events sent before the close (e.g. `SHUTDOWN`) are still
    /// delivered on the events channel.
    pub async fn quit(self) -> Result<(), QmpError> {
        match self.execute(qapi::qmp::quit {}).await {
            Ok(_) | Err(QmpError::ConnectionClosed { .. }) => {}
            Err(e) => return Err(e),
        }
        let Qmp {
            service, reader, ..
        } = self;
        // Keep the service alive: dropping it would stop the reader before
        // EOF and we want to observe QEMU closing the socket.
        let res = tokio::time::timeout(QUIT_TIMEOUT, reader).await;
        drop(service);
        match res {
            Ok(_) => Ok(()),
            Err(_) => Err(QmpError::Timeout {
                waiting_for: "waiting for qemu to close the qmp socket".to_owned(),
                after: QUIT_TIMEOUT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_address_display_is_sysfs_form() {
        let a = PciAddress {
            domain: 0,
            bus: 0,
            slot: 4,
            function: 0,
        };
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b = PciAddress {
            domain: 0x1a,
            bus: 0xfe,
            slot: 0x1f,
            function: 7,
        };
        assert_eq!(b.to_string(), "001a:fe:1f.7");
    }

    #[test]
    fn pci_address_parse_roundtrip() {
        for s in [
            "0000:00:04.0",
            "0000:01:00.0",
            "ffff:ff:1f.7",
            "001a:fe:1f.7",
        ] {
            let a: PciAddress = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "00:1f.3".parse::<PciAddress>().unwrap(),
            PciAddress {
                domain: 0,
                bus: 0,
                slot: 0x1f,
                function: 3
            }
        );
        assert_eq!(
            "0000:0A:1B.2".parse::<PciAddress>().unwrap().to_string(),
            "0000:0a:1b.2"
        );
    }

    #[test]
    fn pci_address_parse_rejects_garbage() {
        for s in [
            "",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "00000:00:04.0",
            "0000:000:04.0",
            "0000:00:04.0.1",
            "0:0:0:0.0",
            "0000:0g:04.0",
            "0000:00:+4.0",
            ":00:04.0",
        ] {
            let err = s.parse::<PciAddress>().unwrap_err();
            assert_eq!(err.to_string(), format!("invalid pci address: {s:?}"));
        }
    }

    #[test]
    fn error_messages_are_short() {
        let e = QmpError::ConnectionClosed { reason: None };
        assert_eq!(e.to_string(), "qmp connection closed");
        let e = QmpError::ConnectionClosed {
            reason: Some("bad line".into()),
        };
        assert_eq!(e.to_string(), "qmp connection closed: bad line");
        let e = QmpError::NoSuchDevice("dev9".into());
        assert_eq!(e.to_string(), "no such device: dev9");
        let e = QmpError::Command {
            command: "device_del",
            class: qapi::ErrorClass::DeviceNotFound,
            desc: "Device 'x' not found".into(),
        };
        assert_eq!(
            e.to_string(),
            "device_del failed: Device 'x' not found (DeviceNotFound)"
        );
    }

    /// Documents the qapi quirk noted at the top: the `oob` capability in
    /// QEMU's greeting is not recognised, so commands go out without ids.
    #[test]
    fn qapi_does_not_detect_oob_in_greeting() {
        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
            "package": ""}, "capabilities": ["oob"]}}"#;
        let caps: qapi::qmp::QapiCapabilities = serde_json::from_str(greeting).unwrap();
        assert_eq!(caps.QMP.capabilities.len(), 1);
        assert!(!caps.supports_oob());
        assert_eq!(caps.capabilities().count(), 0);
    }

    #[test]
    fn session_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Qmp>();
        fn assert_send<T: Send>(_: &T) {}
        fn check(q: &Qmp) {
            assert_send(&q.execute(qapi::qmp::query_status {}));
            assert_send(&q.device_del("x", Duration::from_secs(1)));
            assert_send(&q.pci_address("x"));
        }
        let _ = check;
    }
}
