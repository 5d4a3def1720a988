//! Runs a program for the host (`wire::ExecJob`, a selftest): binds the
//! devices it needs to vfio-pci, starts it in a process group of its own
//! with stdout and stderr on one pipe, forwards its output line by line,
//! keeps the host's silence timer fed, and kills the whole group when it
//! overruns its timeout or when it exits leaving children behind.

use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use wire::{AgentMessage, ExecJob, ExecResult, ExecStatus, MAX_EXEC_OUTPUT};

use crate::say;

/// How long output may still arrive after the program exited (from
/// children that kept the pipe open) before the group is killed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Splits a byte stream into lines and forwards them, up to
/// [`MAX_EXEC_OUTPUT`] bytes; counts what it drops.
struct Lines {
    partial: Vec<u8>,
    forwarded: usize,
    dropped: u64,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            partial: Vec::new(),
            forwarded: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8], send: &mut dyn FnMut(AgentMessage)) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.emit(&line[..line.len() - 1], send);
        }
        // a program that never prints a newline still gets forwarded
        if self.partial.len() >= 4096 {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, send);
        }
    }

    fn finish(&mut self, send: &mut dyn FnMut(AgentMessage)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, send);
        }
    }

    fn emit(&mut self, line: &[u8], send: &mut dyn FnMut(AgentMessage)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.forwarded + line.len() + 1 > MAX_EXEC_OUTPUT {
            self.dropped += line.len() as u64 + 1;
            return;
        }
        self.forwarded += line.len() + 1;
        send(AgentMessage::ExecOutput {
            line: String::from_utf8_lossy(line).into_owned(),
        });
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits up to `timeout` for `fd` to become readable (or hang up).
fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    n > 0
}

fn kill_group(pgid: u32) {
    // SAFETY: plain syscall; a group that is already gone gives ESRCH.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

/// A program started by [`spawn`], in its own process group.
struct Child {
    pid: libc::pid_t,
}

impl Child {
    fn id(&self) -> u32 {
        self.pid as u32
    }

    fn wait_flags(&self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; status is a valid int.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            match r {
                0 => return Ok(None),
                r if r == self.pid => return Ok(Some(ExitStatus::from_raw(status))),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn try_wait(&self) -> std::io::Result<Option<ExitStatus>> {
        self.wait_flags(libc::WNOHANG)
    }

    fn wait(&self) -> std::io::Result<ExitStatus> {
        self.wait_flags(0)?
            .ok_or_else(|| std::io::Error::other("waitpid returned no status"))
    }
}

/// fork and exec `program` with `args`, the agent's environment plus
/// `env`, in `cwd`, in a new process group, stdin /dev/null, stdout and
/// stderr `out`. Not `std::process::Command`: in a static glibc binary
/// its posix_spawn path is never taken (its libc checks are weak symbols,
/// which static binaries lack), and its fork path needs an AF_UNIX
/// socketpair, which a kernel without CONFIG_UNIX (the testbed's built
/// kernels had none before kernel-config/nested.config) refuses with
/// EAFNOSUPPORT.
fn spawn(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    cwd: &str,
    out: OwnedFd,
) -> std::io::Result<Child> {
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| std::io::Error::other("NUL byte in an argument"));
    let path = cstr(program.as_bytes())?;
    let argv_c: Vec<CString> = std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(n, _)| k.as_bytes() == n.as_bytes()))
        .collect();
    vars.extend(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    let envp_c: Vec<CString> = vars
        .iter()
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envp_c.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let cwd_c = cstr(cwd.as_bytes())?;
    let null = std::fs::File::open("/dev/null")?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: the child calls only async-signal-safe functions on memory
    // prepared above, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child; every pointer was made before the fork.
        unsafe {
            let fail = |fd: RawFd| -> ! {
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            };
            let ew = err_write.as_raw_fd();
            if libc::setpgid(0, 0) != 0
                || libc::chdir(cwd_c.as_ptr()) != 0
                || libc::dup2(null.as_raw_fd(), 0) < 0
                || libc::dup2(out.as_raw_fd(), 1) < 0
                || libc::dup2(out.as_raw_fd(), 2) < 0
            {
                fail(ew);
            }
            // the agent's runtime ignores SIGPIPE; a test gets the default
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(ew);
        }
    }
    drop(err_write);
    drop(out);
    let child = Child { pid };
    let mut reader = std::fs::File::from(err_read);
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == 4 {
        let _ = child.wait();
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    Ok(child)
}

/// Runs `job`, sending its output and heartbeats through `send`; returns
/// how it ended. `warnings` drains the kernel warnings logged since its
/// last call.
pub fn run(
    job: &ExecJob,
    send: &mut dyn FnMut(AgentMessage),
    warnings: &mut dyn FnMut() -> Vec<String>,
) -> ExecResult {
    // whatever the kernel said before belongs to whatever ran before
    let _ = warnings();
    let started = Instant::now();
    let result = |status: ExecStatus, dropped_bytes: u64, warnings: Vec<String>| ExecResult {
        status,
        millis: started.elapsed().as_millis() as u64,
        dropped_bytes,
        kernel_warnings: warnings,
        event_counts: None,
    };
    for bdf in &job.vfio_pci {
        if let Err(e) = crate::vfio::bind_vfio_pci(bdf) {
            return result(
                ExecStatus::SetupFailed {
                    error: format!("vfio-pci bind: {e}"),
                },
                0,
                warnings(),
            );
        }
    }
    let Some((program, args)) = job.argv.split_first() else {
        return result(
            ExecStatus::SpawnFailed {
                error: "empty argv".into(),
            },
            0,
            Vec::new(),
        );
    };
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            return result(
                ExecStatus::SpawnFailed {
                    error: format!("pipe: {e}"),
                },
                0,
                Vec::new(),
            )
        }
    };
    say!("exec {}: {}", job.name, job.argv.join(" "));
    // counting starts before the program does and ends after it (and its group) is gone
    let mut counter = crate::evcount::Counter::start(&job.count_events);
    let child = match spawn(
        program,
        args,
        &job.env,
        job.cwd.as_deref().unwrap_or("/"),
        write_end,
    ) {
        Ok(c) => c,
        Err(e) => {
            return result(
                ExecStatus::SpawnFailed {
                    error: format!("{program}: {e}"),
                },
                0,
                warnings(),
            )
        }
    };
    let pgid = child.id();
    let deadline = started + Duration::from_secs(job.timeout_secs);
    let mut reader = std::fs::File::from(read_end);
    let mut lines = Lines::new();
    let mut last_sent = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    let mut eof = false;
    let mut timed_out = false;
    loop {
        if !eof && readable(reader.as_raw_fd(), Duration::from_millis(200)) {
            match reader.read(&mut buf) {
                Ok(0) => eof = true,
                Ok(n) => {
                    let before = lines.forwarded;
                    lines.push(&buf[..n], send);
                    if lines.forwarded != before {
                        last_sent = Instant::now();
                        crate::watchdog::alive();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => eof = true,
            }
        } else if eof {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(c) = counter.as_mut() {
            c.poll();
        }
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some((status, Instant::now()));
            }
        }
        match exited {
            Some(_) if eof => break,
            // children of the test still hold the pipe: give them a moment, then end them
            Some((_, at)) if at.elapsed() >= DRAIN_AFTER_EXIT => break,
            Some(_) => {}
            None if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(pgid);
                let status = child.wait().ok();
                exited = status.map(|s| (s, Instant::now()));
                break;
            }
            None => {}
        }
        if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
            crate::watchdog::alive();
            send(AgentMessage::Progress { index: 0 });
            last_sent = Instant::now();
        }
    }
    // nothing of the program's group outlives it
    kill_group(pgid);
    lines.finish(send);
    let status = match (timed_out, exited) {
        (true, _) => ExecStatus::TimedOut,
        (false, Some((status, _))) => match (status.code(), status.signal()) {
            (Some(code), _) => ExecStatus::Exited { code },
            (None, Some(signal)) => ExecStatus::Signaled { signal },
            (None, None) => ExecStatus::SpawnFailed {
                error: format!("unknown exit status {status:?}"),
            },
        },
        (false, None) => ExecStatus::SpawnFailed {
            error: "lost track of the program".into(),
        },
    };
    say!(
        "exec {}: {:?} after {} ms",
        job.name,
        status,
        started.elapsed().as_millis()
    );
    let counts = counter.map(crate::evcount::Counter::finish);
    ExecResult {
        event_counts: counts,
        ..result(status, lines.dropped, warnings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(argv: &[&str], timeout_secs: u64) -> ExecJob {
        ExecJob {
            name: "t".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hello".into())],
            cwd: Some("/tmp".into()),
            timeout_secs,
            vfio_pci: vec![],
            count_events: vec![],
        }
    }

    fn collect(job: &ExecJob) -> (Vec<String>, ExecResult) {
        let mut out = Vec::new();
        let r = run(
            job,
            &mut |m| {
                if let AgentMessage::ExecOutput { line } = m {
                    out.push(line)
                }
            },
            &mut Vec::new,
        );
        (out, r)
    }

    #[test]
    fn output_order_exit_code_env_and_cwd() {
        let (out, r) = collect(&job(
            &[
                "/bin/sh",
                "-c",
                "echo $GREETING; pwd; echo err >&2; printf tail; exit 4",
            ],
            10,
        ));
        assert_eq!(out, ["hello", "/tmp", "err", "tail"]);
        assert_eq!(r.status, ExecStatus::Exited { code: 4 });
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let t0 = Instant::now();
        let (_, r) = collect(&job(&["/bin/sh", "-c", "sleep 30 & sleep 30"], 1));
        assert_eq!(r.status, ExecStatus::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_child_left_behind_does_not_hold_the_run() {
        let t0 = Instant::now();
        let (out, r) = collect(&job(
            &["/bin/sh", "-c", "echo start; sleep 30 & exit 0"],
            20,
        ));
        assert_eq!(out, ["start"]);
        assert_eq!(r.status, ExecStatus::Exited { code: 0 });
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn signals_and_missing_programs() {
        let (_, r) = collect(&job(&["/bin/sh", "-c", "kill -ABRT $$"], 10));
        assert_eq!(
            r.status,
            ExecStatus::Signaled {
                signal: libc::SIGABRT
            }
        );
        let (_, r) = collect(&job(&["/nonexistent/test"], 10));
        assert!(
            matches!(r.status, ExecStatus::SpawnFailed { ref error } if error.contains("/nonexistent/test")),
            "{r:?}"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_counted_not_sent() {
        let mut lines = Lines::new();
        let mut n = 0;
        let chunk = vec![b'x'; 1023];
        for _ in 0..(MAX_EXEC_OUTPUT / 1024 + 10) {
            lines.push(&chunk, &mut |_| n += 1);
            lines.push(b"\n", &mut |_| n += 1);
        }
        assert_eq!(n, MAX_EXEC_OUTPUT / 1024);
        assert_eq!(lines.dropped, 10 * 1024);
    }
}
