//! Helpers for tests that build their own network namespaces (this crate's and the end-to-end
//! tests of `duplex`): the prerequisites check, `ip` with a deadline, and removal of namespaces
//! left by earlier runs that were killed.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one `ip` or `arping -V` may take.
pub const IP_TIMEOUT: Duration = Duration::from_secs(5);

/// What is missing for this test, naming the Debian package.
pub fn prerequisites() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, addresses, raw sockets)".to_owned());
    }
    ip(&["netns", "list"])
        .map_err(|error| format!("`ip netns` unusable ({error}): install iproute2"))?;
    let arping = output("arping", &["-V"], IP_TIMEOUT)
        .map_err(|error| format!("`arping` missing ({error}): install iputils-arping"))?;
    if !arping.contains("iputils") {
        return Err("`arping` is not the iputils one: install iputils-arping".to_owned());
    }
    Ok(())
}

/// Deletes namespaces of earlier runs that were killed before their guard ran: `PREFIX-PID-*`
/// whose process is gone (or is this one, from an earlier life of the same pid).
pub fn remove_leftovers(prefix: &str) {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    let own = std::process::id().to_string();
    for ns in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = ns
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        if pid == own || !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn must(args: &[&str]) {
    if let Err(error) = ip(args) {
        panic!("ip {}: {error}", args.join(" "));
    }
}

/// Runs `ip ARGS` with a deadline: its output, or an error with its stderr.
pub fn ip(args: &[&str]) -> Result<String, String> {
    output("ip", args, IP_TIMEOUT)
}

/// Runs a short command with a deadline; its stdout, or an error with its stderr.
pub fn output(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| error.to_string())?;
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(1)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
        }
    };
    // These commands print little, well under a pipe's buffer, so reading after the exit
    // cannot block.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if status.success() {
        Ok(stdout + &stderr)
    } else {
        Err(format!("{status}: {}", stderr.trim()))
    }
}
