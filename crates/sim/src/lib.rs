//! The deterministic simulator: runs the duplex engine over a scenario in virtual time.
//!
//! A scenario (TOML, see `examples/sim/`) gives hosts, pairs, how long each phase and boot
//! takes per host, and a fault schedule. The simulated world executes the engine's commands,
//! answers them after those durations, and checks safety independently of the engine: at no
//! moment two incarnations of a pair believe they are ACT. The same scenario, policy and seed
//! always give the same report.
#![deny(missing_docs)]

mod report;
mod scenario;
mod world;

pub use report::{Entry, FaultRecord, PairAfter, Report, UnitAfter, What, secs};
pub use scenario::{
    Broken, FaultPlan, RandomFaults, Scenario, ScenarioError, SimHost, Target, Timing,
};

use duplex_engine::{EngineError, State};
use duplex_model::Policy;

/// How to run a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Overrides the scenario's policy.
    pub policy: Option<Policy>,
    /// Overrides the seed of the scenario's random faults.
    pub seed: Option<u64>,
    /// Skip the per-step invariant checks (for big runs where only figures matter).
    pub skip_checks: bool,
}

/// Runs a scenario once.
pub fn run(sc: &Scenario, opts: RunOptions) -> Result<Report, EngineError> {
    let mut engine = sc.engine.clone();
    if let Some(p) = opts.policy {
        engine.policy = p;
    }
    let policy = engine.policy;
    let hosts = sc.hosts.iter().map(|h| h.spec.clone()).collect();
    let state = State::new(engine, hosts, sc.pairs.clone())?;
    let seed = sc.random.as_ref().map(|r| opts.seed.unwrap_or(r.seed));
    let mut world = world::World::new(sc, state, seed, !opts.skip_checks);
    world.run();
    Ok(Report::build(&sc.name, policy, seed, world))
}
