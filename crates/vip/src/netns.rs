//! Running a closure inside a named network namespace (`ip netns add NAME`, bound at
//! `/run/netns/NAME`).
//!
//! The network namespace is a per-thread attribute, so a fresh thread enters it, does the work
//! and ends; the caller's thread and the rest of the process are never moved.

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// Where iproute2 binds named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Runs `work` on a new thread that has entered network namespace `netns`, waiting at most
/// `timeout` for it. The outer error is about entering the namespace (or the thread), the inner
/// value is whatever `work` returned.
pub(crate) fn run_in<T, F>(netns: &str, timeout: Duration, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("{NETNS_DIR}/{netns}");
    let (done, result) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            let entered = File::open(&path)
                .and_then(|ns| setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
            let _ = done.send(entered.map(|()| work()));
        })?;
    match result.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("work in the namespace did not finish within {timeout:?}"),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(io::Error::other("the thread in the namespace panicked"))
        }
    }
}
