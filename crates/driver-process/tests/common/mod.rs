//! The harness both process-driver test files share: a driver with its observation channel and
//! a temporary directory, deadlines for every wait, and checks that nothing of a unit survives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use duplex_driver::{Observation, UnitInstance};
use duplex_driver_process::ProcessDriver;
use duplex_model::{Epoch, FaultKind, ProcessSpec, Role, UnitId, UnitSpec};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::{Instant, sleep, timeout};

/// Upper bound for one whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound for one expected event (an observation, a file, processes dying).
pub const WAIT: Duration = Duration::from_secs(10);
/// Polling step while waiting for a file or for processes to die (always under a deadline).
pub const POLL: Duration = Duration::from_millis(20);

pub async fn bounded(test: impl Future<Output = ()>) {
    timeout(TEST_LIMIT, test)
        .await
        .expect("the test took longer than its limit");
}

pub fn unit_id(test: &str) -> UnitId {
    UnitId::new(format!("{test}-{}", std::process::id()))
}

pub fn process(name: &str, argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        name: name.into(),
        command: argv.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        cwd: None,
    }
}

pub struct Rig {
    // Declared first so it drops first: it kills what a failed test left, before the directory
    // goes.
    pub driver: ProcessDriver,
    pub rx: UnboundedReceiver<Observation>,
    pub dir: TempDir,
}

impl Rig {
    pub fn new() -> Self {
        let (tx, rx) = unbounded_channel();
        Self {
            driver: ProcessDriver::new(tx),
            rx,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data_dir(&self, unit: &UnitId) -> PathBuf {
        self.dir.path().join("data").join(unit.as_str())
    }

    pub fn runtime_dir(&self, unit: &UnitId) -> PathBuf {
        self.dir.path().join("run").join(unit.as_str())
    }

    pub fn instance(&self, unit: &UnitId, spec: UnitSpec) -> UnitInstance {
        fs::create_dir_all(self.data_dir(unit)).unwrap();
        UnitInstance {
            pair: "pair-1".into(),
            unit: unit.clone(),
            host: "host-a".into(),
            spec,
            data_dir: self.data_dir(unit),
            runtime_dir: self.runtime_dir(unit),
            role: Role::Sby,
            epoch: Epoch(2),
        }
    }

    /// The next observation, whatever it is.
    pub async fn next(&mut self) -> Observation {
        match timeout(WAIT, self.rx.recv()).await {
            Ok(Some(observation)) => observation,
            Ok(None) => panic!("the observation channel closed"),
            Err(_) => panic!("no observation within {WAIT:?}"),
        }
    }

    /// Asserts that nothing is observed for `quiet` (a bounded negative check).
    pub async fn nothing_for(&mut self, quiet: Duration) {
        if let Ok(observation) = timeout(quiet, self.rx.recv()).await {
            panic!("unexpected observation {observation:?}");
        }
    }

    /// The next observation, which must be a `ProbeFailed`: `(probe, fault, detail)`.
    pub async fn probe_failed(&mut self, unit: &UnitId) -> (String, FaultKind, String) {
        match self.next().await {
            Observation::ProbeFailed {
                unit: u,
                probe,
                fault,
                detail,
            } => {
                assert_eq!(&u, unit);
                (probe, fault, detail)
            }
            other => panic!("expected ProbeFailed, got {other:?}"),
        }
    }

    pub async fn pids(&self, unit: &UnitId) -> BTreeMap<String, Option<u32>> {
        self.driver
            .processes(unit)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.pid))
            .collect()
    }

    pub async fn pid(&self, unit: &UnitId, name: &str) -> Pid {
        let pid = self.pids(unit).await[name].unwrap_or_else(|| panic!("{name} does not run"));
        Pid::from_raw(i32::try_from(pid).unwrap())
    }
}

/// Whether `pid` is a live process (a zombie is dead).
pub fn alive(pid: Pid) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next()
        .unwrap();
    !matches!(state, "Z" | "X")
}

/// The state letter of a process (`S`, `R`, `T` for stopped, ...).
pub fn state(pid: Pid) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every live process whose environment says it belongs to `unit`.
pub fn unit_processes(unit: &UnitId) -> Vec<Pid> {
    let marker = format!("DUPLEX_UNIT={unit}");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Waits until no process of `unit` is alive.
pub async fn assert_gone(unit: &UnitId) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = unit_processes(unit);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of {unit} survive: {left:?}"
        );
        sleep(POLL).await;
    }
}

pub async fn assert_dead(pid: Pid) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} survives");
        sleep(POLL).await;
    }
}

/// Waits for `path` to exist with content ending in a newline, and returns the content.
pub async fn read_when_written(path: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written",
            path.display()
        );
        sleep(POLL).await;
    }
}

/// Waits until the file at `path` has at least `lines` lines, and returns them.
pub async fn lines_when_written(path: &Path, lines: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_owned).collect();
        if got.len() >= lines && text.ends_with('\n') {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {got:?}, want {lines} lines",
            path.display()
        );
        sleep(POLL).await;
    }
}

pub fn ready(unit: &UnitId) -> Observation {
    Observation::Ready { unit: unit.clone() }
}
