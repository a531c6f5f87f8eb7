//! The janitor: a tiny `/bin/sh` process that outlives the driver just long enough to kill
//! every process group the driver still had.
//!
//! `PR_SET_PDEATHSIG` kills a unit's direct children when the driver dies, but not *their*
//! children (the death signal is not inherited across `fork`). The janitor closes that gap. The
//! driver tells it each group it creates (`+ PGID`) and each group it has cleaned up
//! (`- PGID`) over a pipe. When the pipe closes — the driver was dropped, or its process died
//! in any way, even by SIGKILL — the janitor sends SIGCONT and SIGKILL to every group still
//! registered, then exits. It runs in its own process group, so a terminal's Ctrl-C aimed at
//! the driver does not reach it.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::unistd::Pid;

const SCRIPT: &str = r#"trap '' HUP INT QUIT
groups=' '
while read -r op pgid; do
  case $op in
    +) groups="$groups$pgid " ;;
    -) case $groups in *" $pgid "*) groups="${groups%%" $pgid "*} ${groups#*" $pgid "}" ;; esac ;;
  esac
done
for pgid in $groups; do kill -s CONT -- "-$pgid"; kill -s KILL -- "-$pgid"; done 2>/dev/null
exit 0
"#;

/// The driver's side of the janitor, and the driver's own list of live process groups.
#[derive(Debug)]
pub(crate) struct Janitor {
    pipe: Mutex<Option<ChildStdin>>,
    process: Mutex<Option<Child>>,
    groups: Mutex<BTreeSet<Pid>>,
}

impl Janitor {
    /// Starts the janitor process. Without `/bin/sh` the driver still works, without this
    /// safety net (a warning says so).
    pub(crate) fn start() -> Self {
        let spawned = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("duplex-janitor")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut process) => Self {
                pipe: Mutex::new(process.stdin.take()),
                process: Mutex::new(Some(process)),
                groups: Mutex::default(),
            },
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot start the janitor (/bin/sh): grandchildren of unit processes may \
                     survive if this process is killed"
                );
                Self {
                    pipe: Mutex::new(None),
                    process: Mutex::new(None),
                    groups: Mutex::default(),
                }
            }
        }
    }

    /// A new process group exists.
    pub(crate) fn register(&self, pgid: Pid) {
        lock(&self.groups).insert(pgid);
        self.tell(&format!("+ {pgid}\n"));
    }

    /// A process group is gone (its leader reaped, its members killed).
    pub(crate) fn unregister(&self, pgid: Pid) {
        if lock(&self.groups).remove(&pgid) {
            self.tell(&format!("- {pgid}\n"));
        }
    }

    /// Every group registered and not yet unregistered.
    pub(crate) fn groups(&self) -> Vec<Pid> {
        lock(&self.groups).iter().copied().collect()
    }

    /// Closes the pipe and waits for the janitor to finish: it kills whatever is still
    /// registered, then exits.
    pub(crate) fn close(&self) {
        lock(&self.pipe).take();
        if let Some(mut process) = lock(&self.process).take() {
            let _ = process.wait();
        }
    }

    fn tell(&self, line: &str) {
        let mut pipe = lock(&self.pipe);
        if let Some(stdin) = pipe.as_mut()
            && let Err(e) = stdin.write_all(line.as_bytes())
        {
            tracing::warn!(error = %e, "the janitor is gone; continuing without it");
            pipe.take();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
