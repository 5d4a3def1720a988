//! A QMP transcript: every line the client sends and receives, as it went
//! over the socket, with the time since connect. The socket is wrapped
//! below qapi, so commands, replies and events are logged exactly as
//! exchanged (including ones qapi cannot decode).

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a transcript goes, shared by both directions of one socket.
#[derive(Clone)]
pub(crate) struct Log {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    out: Box<dyn Write + Send>,
    started: Instant,
    /// Partial lines per direction (0: sent, 1: received).
    partial: [Vec<u8>; 2],
}

impl Log {
    pub(crate) fn new(out: Box<dyn Write + Send>) -> Log {
        Log {
            inner: Arc::new(Mutex::new(LogInner {
                out,
                started: Instant::now(),
                partial: [Vec::new(), Vec::new()],
            })),
        }
    }

    /// Records `bytes` that went one way; complete lines are written out.
    fn record(&self, received: bool, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        let partial = &mut inner.partial[usize::from(received)];
        partial.extend_from_slice(bytes);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let arrow = if received { "<-" } else { "->" };
            let at = inner.started.elapsed().as_secs_f64();
            // A transcript that cannot be written must not break the session.
            let _ = writeln!(inner.out, "{at:9.3} {arrow} {line}");
        }
        let _ = inner.out.flush();
    }
}

/// A stream that copies what passes through it into a [`Log`].
pub(crate) struct Transcribed<S> {
    stream: S,
    log: Option<Log>,
}

impl<S> Transcribed<S> {
    pub(crate) fn new(stream: S, log: Option<Log>) -> Self {
        Transcribed { stream, log }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Transcribed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(log)) = (&res, &this.log) {
            log.record(true, &buf.filled()[before..]);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Transcribed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(log)) = (&res, &this.log) {
            log.record(false, &buf[..*n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_logged_whole_per_direction() {
        let out = Shared::default();
        let log = Log::new(Box::new(out.clone()));
        log.record(false, b"{\"execute\": \"qu");
        log.record(true, b"{\"QMP\": {}}\n{\"ret\"");
        log.record(false, b"it\"}\n");
        log.record(true, b": {}}\n\n");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start().split_once(' ').map_or(l, |(_, rest)| rest))
            .collect();
        assert_eq!(
            lines,
            [
                "<- {\"QMP\": {}}",
                "-> {\"execute\": \"quit\"}",
                "<- {\"ret\": {}}"
            ]
        );
    }
}
