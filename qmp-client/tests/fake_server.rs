//! Tests against a scripted in-process QMP server, for behaviour that a real
//! QEMU does not produce on demand (slow replies, events unknown to qapi's
//! schema, client drop). No QEMU needed, so these are not gated.

use std::path::PathBuf;
use std::time::Duration;

use qmp_client::qapi::qmp::{self, Event, RunState};
use qmp_client::{Qmp, QmpError};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "fake"}, "capabilities": ["oob"]}}"#;

fn event(name: &str, data: Value) -> Value {
    json!({"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}})
}

/// What the fake server does for one command: wait, then send these lines
/// (events and/or the response).
struct Reply {
    delay: Duration,
    lines: Vec<Value>,
}

fn ok(ret: Value) -> Reply {
    Reply {
        delay: Duration::ZERO,
        lines: vec![json!({ "return": ret })],
    }
}

/// A one-connection QMP server. `script` maps each received command to its
/// reply; every received command name is reported on the returned channel,
/// and the channel closes when the client closed the connection.
fn serve(
    script: impl Fn(&str) -> Reply + Send + 'static,
) -> (
    TempDir,
    PathBuf,
    mpsc::UnboundedReceiver<String>,
    JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let (r, mut w) = sock.into_split();
        w.write_all(format!("{GREETING}\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            let name = cmd["execute"].as_str().unwrap().to_owned();
            let _ = seen_tx.send(name.clone());
            let reply = if name == "qmp_capabilities" {
                ok(json!({}))
            } else {
                script(&name)
            };
            tokio::time::sleep(reply.delay).await;
            for mut l in reply.lines {
                if let (Some(id), Some(obj)) = (cmd.get("id"), l.as_object_mut()) {
                    if !obj.contains_key("event") {
                        obj.insert("id".into(), id.clone());
                    }
                }
                if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (dir, path, seen_rx, server)
}

fn status_running() -> Value {
    json!({"status": "running", "running": true})
}

fn version() -> Value {
    json!({"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "fake"})
}

#[tokio::test]
async fn abandoned_execute_does_not_break_the_next_one() {
    let (_dir, path, _seen, server) = serve(|name| match name {
        "query-status" => Reply {
            delay: Duration::from_millis(300),
            lines: vec![json!({ "return": status_running() })],
        },
        "query-version" => ok(version()),
        other => panic!("unexpected {other}"),
    });
    let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();

    // The caller gives up while QEMU is still working on it...
    let slow =
        tokio::time::timeout(Duration::from_millis(50), qmp.execute(qmp::query_status {})).await;
    assert!(slow.is_err(), "expected the caller's timeout");
    // ...and the next command must get its own response, not the late one.
    let v = qmp.execute(qmp::query_version {}).await.unwrap();
    assert_eq!(v.package, "fake");
    let s = qmp.execute(qmp::query_status {}).await.unwrap();
    assert_eq!(s.status, RunState::running);
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn events_between_command_and_response_are_kept_in_order() {
    let (_dir, path, _seen, server) = serve(|name| match name {
        "stop" => Reply {
            delay: Duration::ZERO,
            lines: vec![
                event("STOP", json!({})),
                event(
                    "RESET",
                    json!({"guest": false, "reason": "host-qmp-system-reset"}),
                ),
                json!({"return": {}}),
                event("RESUME", json!({})),
            ],
        },
        other => panic!("unexpected {other}"),
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
    qmp.execute(qmp::stop {}).await.unwrap();
    let mut rx = qmp.take_events().unwrap();
    let mut names = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        names.push(match e {
            Event::STOP { .. } => "STOP",
            Event::RESET { .. } => "RESET",
            Event::RESUME { .. } => "RESUME",
            _ => "other",
        });
    }
    assert_eq!(names, ["STOP", "RESET", "RESUME"]);
    drop(qmp);
    server.await.unwrap();
}

#[tokio::test]
async fn undecodable_event_ends_the_session_with_a_reason() {
    // An event newer than qapi's bundled schema (QEMU 10.0 added this one).
    let (_dir, path, _seen, _server) = serve(|name| match name {
        "query-name" => Reply {
            delay: Duration::ZERO,
            lines: vec![
                event(
                    "NETDEV_VHOST_USER_CONNECTED",
                    json!({"netdev-id": "n0", "chardev-id": "c0"}),
                ),
                json!({"return": {}}),
            ],
        },
        other => panic!("unexpected {other}"),
    });
    let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
    let mut rx = qmp.take_events().unwrap();
    let err = qmp.execute(qmp::query_name {}).await.unwrap_err();
    match &err {
        QmpError::ConnectionClosed { reason: Some(r) } => assert!(!r.is_empty()),
        other => panic!("expected ConnectionClosed with reason, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "event channel should close, got {end:?}"
    );
}

#[tokio::test]
async fn dropping_the_session_closes_the_socket() {
    let (_dir, path, mut seen, server) = serve(|_| ok(json!({})));
    let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
    assert_eq!(seen.recv().await.as_deref(), Some("qmp_capabilities"));
    drop(qmp);
    // The server sees EOF: the reader task stopped and the socket closed.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("socket still open after drop")
        .unwrap();
}

#[tokio::test]
async fn no_greeting_is_a_negotiation_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let _mute = tokio::spawn(async move {
        let (_sock, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let err = Qmp::connect(&path, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Negotiation(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "qmp negotiation failed: no greeting within 300ms"
    );
}

/// The transcript holds the greeting, every command and reply, and events,
/// in the order they crossed the socket.
#[tokio::test]
async fn transcript_logs_commands_replies_and_events() {
    let (dir, path, _seen, server) = serve(|name| match name {
        "stop" => Reply {
            delay: Duration::ZERO,
            lines: vec![event("STOP", json!({})), json!({"return": {}})],
        },
        other => panic!("unexpected {other}"),
    });
    let log_path = dir.path().join("qmp.log");
    let file = std::fs::File::create(&log_path).unwrap();
    let qmp = Qmp::connect_with_transcript(&path, Duration::from_secs(5), Box::new(file))
        .await
        .unwrap();
    qmp.execute(qmp::stop {}).await.unwrap();
    drop(qmp);
    server.await.unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let arrows: Vec<(&str, &str)> = text
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            words.next().unwrap().parse::<f64>().unwrap();
            let arrow = words.next().unwrap();
            (arrow, l.split_once(arrow).unwrap().1.trim())
        })
        .collect();
    assert_eq!(arrows.len(), 6, "{text}");
    assert_eq!(arrows[0].0, "<-");
    assert!(arrows[0].1.starts_with(r#"{"QMP""#), "{text}");
    assert_eq!(arrows[1].0, "->");
    assert!(arrows[1].1.contains("qmp_capabilities"), "{text}");
    assert_eq!(arrows[2], ("<-", r#"{"return":{}}"#));
    assert_eq!(arrows[3].0, "->");
    assert!(arrows[3].1.contains(r#""stop""#), "{text}");
    assert!(arrows[4].1.contains(r#""event":"STOP""#), "{text}");
    assert_eq!(arrows[5], ("<-", r#"{"return":{}}"#));
}
