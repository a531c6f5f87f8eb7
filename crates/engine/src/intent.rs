//! Operator intents. Each is checked completely before anything changes, so a refused intent
//! leaves no trace.

use duplex_model::{HostId, PairId, Role, UnitId};

use crate::error::EngineError;
use crate::event::Intent;
use crate::note::Note;
use crate::state::{Health, Pair};
use crate::step::Cx;

pub(crate) fn apply(cx: &mut Cx<'_>, intent: Intent) -> Result<(), EngineError> {
    match intent {
        Intent::Switchover { pair } => switchover(cx, &pair),
        Intent::UnitMaintenance { unit, on } => unit_maintenance(cx, &unit, on),
        Intent::HostMaintenance { host, on } => host_maintenance(cx, &host, on),
    }
}

/// A short description of where a pair stands, for refusals.
pub fn describe(pair: &Pair) -> String {
    if pair.duplex {
        return "duplex".into();
    }
    let recovering = pair
        .units
        .iter()
        .filter(|u| matches!(u.health, Health::Recovering(_)))
        .count();
    if recovering > 0 {
        return format!("recovering ({recovering} unit(s) in a restart step)");
    }
    if pair
        .units
        .iter()
        .any(|u| u.health == Health::WaitingForSpare)
    {
        return "simplex (a unit waits for a spare)".into();
    }
    "not duplex".into()
}

fn switchover(cx: &mut Cx<'_>, pid: &PairId) -> Result<(), EngineError> {
    let pair = cx
        .st
        .pairs
        .get(pid)
        .ok_or_else(|| EngineError::NoSuchPair { pair: pid.clone() })?;
    let Some(act) = pair.act_index().filter(|_| pair.duplex) else {
        return Err(EngineError::InvalidTransition {
            pair: pid.clone(),
            from: describe(pair),
            to: "switchover (needs a pair running duplex)".into(),
        });
    };
    cx.demote(pid, act);
    Ok(())
}

fn unit_maintenance(cx: &mut Cx<'_>, unit: &UnitId, on: bool) -> Result<(), EngineError> {
    let (pid, slot) = cx
        .st
        .locate(unit)
        .ok_or_else(|| EngineError::NoSuchUnit { unit: unit.clone() })?;
    let pair = cx.pair(&pid);
    let u = &pair.units[slot];
    if u.maintenance == on {
        return Ok(());
    }
    if on && u.role == Role::Act && !pair.duplex {
        return Err(EngineError::InvalidTransition {
            pair: pid.clone(),
            from: describe(pair),
            to: format!("maintenance of ACT unit {unit} (its SBY must be serving to take over)"),
        });
    }
    match (on, u.role) {
        (true, Role::Act) => cx.demote(&pid, slot),
        (true, Role::Sby | Role::None) => cx.revoke(&pid, slot),
        (false, _) => {}
    }
    let u = cx.unit_mut(&pid, slot);
    u.maintenance = on;
    if !on {
        u.ladder = None;
    }
    cx.note(Note::Maintenance {
        target: format!("unit {unit}"),
        on,
    });
    Ok(())
}

fn host_maintenance(cx: &mut Cx<'_>, host: &HostId, on: bool) -> Result<(), EngineError> {
    let h = cx
        .st
        .hosts
        .get(host)
        .ok_or_else(|| EngineError::NoSuchHost { host: host.clone() })?;
    if h.maintenance == on {
        return Ok(());
    }
    cx.touch_host(host);
    cx.st
        .hosts
        .get_mut(host)
        .expect("checked above")
        .maintenance = on;
    cx.note(Note::Maintenance {
        target: format!("host {host}"),
        on,
    });
    if !on {
        cx.capacity_freed = true;
        return Ok(());
    }
    // Drain: ACTs of pairs running duplex switch over; others stay (moving them would leave
    // the pair without service) and are listed in the note's history by their pair state.
    for unit in cx.st.placed_on(host) {
        let (pid, slot) = cx.st.locate(&unit).expect("placed units are indexed");
        let pair = cx.pair(&pid);
        if pair.duplex && pair.units[slot].role == Role::Act {
            cx.demote(&pid, slot);
        } else if pair.units[slot].role == Role::Act {
            cx.ignore(format!(
                "host {host} drain: ACT {unit} stays, pair {pid} is {}",
                describe(pair)
            ));
        }
    }
    Ok(())
}
