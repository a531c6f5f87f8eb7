//! The `vip` service-address mode on this host: a unit that becomes ACT here claims its pair's
//! virtual address (add + gratuitous ARP), a unit that stops being ACT here (demotion, destroy,
//! fence, self-fence) releases it. Each outcome is reported as `HookRan` with hook name `vip`.
//!
//! Claims block (about two seconds with `arping`), so they run on blocking threads, off the
//! command path; each unit has one worker task, so the claims and releases of one unit happen
//! in the order of its role changes and never overlap.
//!
//! A release gives up the address the unit claimed here, whatever the command that demoted it
//! says: the controller renders a unit's address for the host the unit runs on *now*, which is
//! already its next host when it is moved (a recreate on a spare).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use duplex_model::wire::{AgentReport, UnitRef, VipSpec};
use duplex_model::{Epoch, HostId, Role, UnitId};
use tokio::sync::mpsc;

/// The hook name the outcomes are reported under.
pub(crate) const HOOK: &str = "vip";

/// One claim or release of a unit's virtual address.
#[derive(Clone, Debug)]
pub(crate) struct Move {
    pub unit: UnitId,
    pub host: HostId,
    pub vip: VipSpec,
    /// `true`: claim (the unit became ACT); `false`: release.
    pub claim: bool,
    /// The role the unit changed to, and its epoch (for the report).
    pub role: Role,
    pub epoch: Epoch,
}

/// The workers, one per unit that ever moved its address here.
#[derive(Debug, Default)]
pub(crate) struct Vips {
    queues: Mutex<BTreeMap<UnitId, Queue>>,
    /// What each unit claimed here and has not released yet.
    held: Arc<Mutex<BTreeMap<UnitId, VipSpec>>>,
}

#[derive(Debug)]
struct Queue {
    tx: mpsc::UnboundedSender<Move>,
    task: tokio::task::AbortHandle,
}

impl Vips {
    /// Queues a role change of a unit with a virtual address: a claim when it becomes ACT, a
    /// release when it stops being ACT; nothing otherwise. Returns at once.
    pub fn changed(
        &self,
        unit: &UnitRef,
        host: &HostId,
        previous: Role,
        role: Role,
        epoch: Epoch,
        reports: &mpsc::UnboundedSender<AgentReport>,
    ) {
        let Some(vip) = &unit.vip else { return };
        let unit = &unit.unit;
        let claim = match (previous == Role::Act, role == Role::Act) {
            (false, true) => true,
            (true, false) => false,
            _ => return,
        };
        let next = Move {
            unit: unit.clone(),
            host: host.clone(),
            vip: vip.clone(),
            claim,
            role,
            epoch,
        };
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match queues.get(unit) {
            Some(queue) => match queue.tx.send(next) {
                Ok(()) => return,
                Err(mpsc::error::SendError(next)) => next,
            },
            None => next,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(worker(rx, reports.clone(), self.held.clone())).abort_handle();
        let _ = tx.send(next);
        queues.insert(unit.clone(), Queue { tx, task });
    }

    /// Stops every worker (the agent stops); a claim or release under way finishes on its
    /// blocking thread.
    pub fn abort_all(&self) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in queues.values() {
            queue.task.abort();
        }
        queues.clear();
    }

    /// The addresses claimed here and not released, by unit (after [`Vips::abort_all`]: what
    /// the agent must release as it stops).
    pub fn held(&self) -> BTreeMap<UnitId, VipSpec> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs one unit's claims and releases, one after the other.
async fn worker(
    mut rx: mpsc::UnboundedReceiver<Move>,
    reports: mpsc::UnboundedSender<AgentReport>,
    held: Arc<Mutex<BTreeMap<UnitId, VipSpec>>>,
) {
    while let Some(mut next) = rx.recv().await {
        let unit = next.unit.clone();
        let claimed = held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&unit)
            .cloned();
        if !next.claim
            && let Some(claimed) = claimed
        {
            next.vip = claimed;
        }
        let (claim, vip) = (next.claim, next.vip.clone());
        let report = apply(next).await;
        let ok = matches!(report, AgentReport::HookRan { ok: true, .. });
        {
            let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
            if claim {
                // Even a failed claim may have added the address (the announcement failed).
                held.insert(unit, vip);
            } else if ok {
                held.remove(&unit);
            }
        }
        let _ = reports.send(report);
    }
}

/// Claims or releases the address on a blocking thread; the outcome as a `HookRan` report.
pub(crate) async fn apply(next: Move) -> AgentReport {
    let spec = next.vip.clone();
    let claim = next.claim;
    let cidr = format!("{}/{}", spec.address, spec.prefix);
    let place = match &spec.netns {
        Some(ns) => format!("{} (network namespace {ns})", spec.interface),
        None => spec.interface.clone(),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let address = spec
            .address
            .parse()
            .map_err(|_| format!("{:?} is not an IP address", spec.address))?;
        let vip = duplex_vip::Vip {
            address,
            prefix: spec.prefix,
            interface: spec.interface,
            netns: spec.netns,
        };
        if claim { vip.claim() } else { vip.release() }.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("the claim/release thread failed: {e}")));
    let verb = if claim { "claimed" } else { "released" };
    let (status, ok) = match outcome {
        Ok(()) => (format!("{verb} {cidr} on {place}"), true),
        Err(e) => (
            format!(
                "cannot {} {cidr} on {place}: {e}",
                if claim { "claim" } else { "release" }
            ),
            false,
        ),
    };
    if ok {
        tracing::info!(host = %next.host, unit = %next.unit, role = %next.role, %status, "virtual address");
    } else {
        tracing::warn!(host = %next.host, unit = %next.unit, role = %next.role, %status, "virtual address");
    }
    AgentReport::HookRan {
        unit: next.unit,
        hook: HOOK.to_owned(),
        role: next.role,
        epoch: next.epoch,
        status,
        ok,
        output: String::new(),
    }
}
