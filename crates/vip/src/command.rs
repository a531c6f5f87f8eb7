//! Running `ip` and `arping` with a deadline.
//!
//! Each command runs in its own process group with stdin closed, stdout and stderr captured and
//! `LC_ALL=C`; when the deadline passes the whole group is killed, so nothing outlives the call.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often a running command is polled for its exit.
const POLL: Duration = Duration::from_millis(5);

/// A command line: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandLine {
    pub(crate) program: &'static str,
    pub(crate) args: Vec<String>,
}

impl CommandLine {
    /// `program args...`, for messages. Arguments never contain whitespace (names are
    /// validated first), so joining with spaces is unambiguous.
    pub(crate) fn display(&self) -> String {
        let mut line = self.program.to_owned();
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// A command that ran to its end, successful or not.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// How running a command went wrong before it could finish.
#[derive(Debug)]
pub(crate) enum RunError {
    Spawn(io::Error),
    TimedOut,
}

/// Runs `line` and waits at most `timeout` for it.
pub(crate) fn run(line: &CommandLine, timeout: Duration) -> Result<Finished, RunError> {
    let mut child = Command::new(line.program)
        .args(&line.args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(RunError::Spawn)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + timeout);
    // The pipes close once the group is gone, so these joins end.
    let stdout = join(stdout);
    let stderr = join(stderr);
    let status = status.ok_or(RunError::TimedOut)?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Waits for the child until `deadline`; past it, kills its process group and reaps it.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            Ok(None) | Err(_) => {
                kill_group(child);
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn kill_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        // The child leads its own group (process_group(0)), whose id is its pid.
        Ok(pid) => {
            if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_err() {
                let _ = child.kill();
            }
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    })
}

fn join(reader: Option<JoinHandle<String>>) -> String {
    reader
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(program: &'static str, args: &[&str]) -> CommandLine {
        CommandLine {
            program,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    #[test]
    fn run_captures_status_and_output() {
        let done = run(
            &line("sh", &["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");
    }

    #[test]
    fn run_kills_the_whole_group_at_the_deadline() {
        let started = Instant::now();
        // The background sleep holds the pipes open: only killing the group ends the call.
        let result = run(
            &line("sh", &["-c", "sleep 30 & sleep 30"]),
            Duration::from_millis(200),
        );
        assert!(matches!(result, Err(RunError::TimedOut)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_reports_a_missing_program() {
        let result = run(
            &line("duplex-vip-no-such-program", &[]),
            Duration::from_secs(1),
        );
        assert!(matches!(result, Err(RunError::Spawn(_))), "{result:?}");
    }

    #[test]
    fn display_joins_program_and_arguments() {
        assert_eq!(
            line("ip", &["addr", "del", "10.0.0.1/32"]).display(),
            "ip addr del 10.0.0.1/32"
        );
    }
}
