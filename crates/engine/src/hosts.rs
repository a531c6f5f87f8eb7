//! Host loss, fencing and return. Units on a lost host are healed elsewhere at once; a new ACT
//! is only granted after the old ACT incarnation is fenced (`roles::settle` checks that).

use duplex_model::{FaultKind, HostId, PairId, Phase, Policy, Role};

use crate::command::Command;
use crate::note::{Decision, Note};
use crate::recovery;
use crate::state::FenceState;
use crate::step::Cx;

pub(crate) fn on_host_down(cx: &mut Cx<'_>, host: &HostId) {
    let Some(h) = cx.st.hosts.get(host) else {
        cx.ignore(format!("host-down for unknown host {host}"));
        return;
    };
    if !h.up {
        return;
    }
    cx.touch_host(host);
    cx.note(Note::HostLost { host: host.clone() });
    let placed = cx.st.placed_on(host);
    // Every unit with an incarnation there (running, or an ACT not yet released) is an orphan
    // until fencing confirms it is gone.
    let mut orphans: Vec<_> = placed.clone();
    for pair in cx.st.pairs.values() {
        orphans.extend(
            pair.unreleased
                .iter()
                .filter(|i| &i.host == host)
                .map(|i| i.unit.clone()),
        );
    }
    let h = cx.st.hosts.get_mut(host).expect("checked above");
    h.up = false;
    if !orphans.is_empty() {
        h.orphans.extend(orphans);
        h.fence = FenceState::Requested;
        cx.emit(Command::FenceHost { host: host.clone() });
    }
    for unit in placed {
        let (pid, slot) = cx.st.locate(&unit).expect("placed units are indexed");
        heal_from_lost_host(cx, &pid, slot);
    }
}

/// A unit whose host is lost: an ACT hands over to its SBY (except under the pure escalation
/// policy, where it keeps ACT and is recreated elsewhere), and the unit is recreated on a spare.
fn heal_from_lost_host(cx: &mut Cx<'_>, pid: &PairId, slot: usize) {
    let u = cx.unit(pid, slot);
    let (unit, role) = (u.id.clone(), u.role);
    cx.note(Note::Fault {
        pair: pid.clone(),
        unit,
        kind: FaultKind::HostDown,
        role,
        decision: Decision::HostLost,
    });
    if role == Role::Act && cx.st.config.policy != Policy::Escalation {
        cx.demote(pid, slot);
    }
    recovery::heal_or_wait(cx, pid, slot, Phase::AutoHeal);
}

pub(crate) fn on_host_fenced(cx: &mut Cx<'_>, host: &HostId) {
    let Some(h) = cx.st.hosts.get(host) else {
        cx.ignore(format!("host-fenced for unknown host {host}"));
        return;
    };
    if h.fence != FenceState::Requested {
        return;
    }
    let up = h.up;
    let orphans: Vec<_> = h.orphans.iter().cloned().collect();
    cx.touch_host(host);
    cx.note(Note::HostFenced { host: host.clone() });
    for unit in &orphans {
        if let Some((pid, _)) = cx.st.locate(unit) {
            let pair = cx.pair(&pid);
            if pair.unreleased.iter().any(|i| &i.host == host) {
                cx.pair_mut(&pid).unreleased.retain(|i| &i.host != host);
            }
        }
    }
    cx.st.hosts.get_mut(host).expect("checked above").fence = FenceState::Done;
    if up {
        reclaim(cx, host);
    }
}

pub(crate) fn on_host_up(cx: &mut Cx<'_>, host: &HostId) {
    let Some(h) = cx.st.hosts.get(host) else {
        cx.ignore(format!("host-up for unknown host {host}"));
        return;
    };
    if h.up {
        return;
    }
    let fence = h.fence;
    cx.touch_host(host);
    cx.note(Note::HostReturned { host: host.clone() });
    cx.st.hosts.get_mut(host).expect("checked above").up = true;
    match fence {
        // The agent can hear us again: fence now, reclaim when that is confirmed.
        FenceState::Requested => cx.emit(Command::FenceHost { host: host.clone() }),
        FenceState::Done => reclaim(cx, host),
        FenceState::Clear => cx.capacity_freed = true,
    }
}

/// A fenced host that is back: destroy the stale incarnations it may still hold, then use it.
fn reclaim(cx: &mut Cx<'_>, host: &HostId) {
    let h = cx.st.hosts.get_mut(host).expect("reclaim a known host");
    let orphans = std::mem::take(&mut h.orphans);
    h.fence = FenceState::Clear;
    for unit in orphans {
        let Some((pid, _)) = cx.st.locate(&unit) else {
            continue;
        };
        let epoch = cx.pair(&pid).epoch;
        cx.emit(Command::DestroyUnit {
            pair: pid,
            unit,
            host: host.clone(),
            epoch,
        });
    }
    cx.capacity_freed = true;
}
