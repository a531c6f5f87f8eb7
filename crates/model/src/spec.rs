//! How a unit runs: its layers of processes, its watchdog, its timeouts. A unit spec comes from
//! the config (`[units.NAME]`) and is handed to a driver on every host that runs the unit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// One process of a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Its name within the unit (unique in the unit).
    pub name: String,
    /// Program and arguments. `{unit}`, `{pair}`, `{host}`, `{data_dir}`, `{runtime_dir}` and
    /// every key of the unit's `vars` are replaced before it starts.
    pub command: Vec<String>,
    /// Extra environment variables (templated like `command`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (templated); default: the unit's runtime directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// A unit: a middleware layer and an application layer of processes (DESIGN.md §1 phases map
/// onto them: PH0.5 one process, PH1.0 the application, PH2.0 both layers, PH2.5+ everything
/// torn down and rebuilt from the init store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Started first, stopped last.
    #[serde(default)]
    pub middleware: Vec<ProcessSpec>,
    /// Started after the middleware.
    pub application: Vec<ProcessSpec>,
    /// The unit must pet its watchdog at least this often once it is ready; `None`: no
    /// watchdog (the unit counts as ready once its processes ran for `ready_grace_ms`).
    #[serde(default)]
    pub watchdog_ms: Option<Millis>,
    /// Without a watchdog, how long every process must have run to count as up.
    #[serde(default = "default_ready_grace")]
    pub ready_grace_ms: Millis,
    /// From SIGTERM to SIGKILL when stopping a process.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: Millis,
    /// Free template variables (e.g. `port = "7501"`), per unit.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

fn default_ready_grace() -> Millis {
    500
}

fn default_stop_timeout() -> Millis {
    2_000
}

impl UnitSpec {
    /// Every process, middleware first.
    pub fn processes(&self) -> impl Iterator<Item = (Layer, &ProcessSpec)> {
        self.middleware
            .iter()
            .map(|p| (Layer::Middleware, p))
            .chain(self.application.iter().map(|p| (Layer::Application, p)))
    }
}

/// The layer a process belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Middleware: restarted from PH2.0 up.
    Middleware,
    /// Application: restarted from PH1.0 up.
    Application,
}

/// Environment variables every unit process gets: how the unit learns where its watchdog is,
/// and its role and epoch (see `docs/unit-protocol.md`).
pub mod env {
    /// Path of the Unix datagram socket to pet (send any datagram, e.g. `pet`).
    pub const WATCHDOG: &str = "DUPLEX_WATCHDOG";
    /// The watchdog period in milliseconds.
    pub const WATCHDOG_MS: &str = "DUPLEX_WATCHDOG_MS";
    /// The role at start: `act`, `sby` or `none`.
    pub const ROLE: &str = "DUPLEX_ROLE";
    /// The epoch at start.
    pub const EPOCH: &str = "DUPLEX_EPOCH";
    /// Path of the role file, rewritten atomically on every change (`{"role":"act","epoch":3}`);
    /// the application processes also get SIGUSR1 after each change.
    pub const ROLE_FILE: &str = "DUPLEX_ROLE_FILE";
    /// The unit's data directory (restored from the init store before start).
    pub const DATA_DIR: &str = "DUPLEX_DATA_DIR";
    /// The unit's name.
    pub const UNIT: &str = "DUPLEX_UNIT";
    /// The pair's name.
    pub const PAIR: &str = "DUPLEX_PAIR";
}
