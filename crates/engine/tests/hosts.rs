//! Host failure (DESIGN.md §3 "Host failure": units there are healed elsewhere; an ACT there is
//! replaced by promoting its SBY; never heal a unit whose old copy might still run: fence first)
//! and docs/recovery.md §"Hosts".

mod common;

use common::*;
use duplex_engine::model::{FaultKind, Generation, Phase, Policy, Role};
use duplex_engine::{Command, Decision, FenceState, Note};

fn fault_note(unit: &str, role: Role) -> Note {
    Note::Fault {
        pair: pid(P),
        unit: uid(unit),
        kind: FaultKind::HostDown,
        role,
        decision: Decision::HostLost,
    }
}

fn grants_act(r: &[Command]) -> bool {
    r.iter().any(|c| {
        matches!(
            c,
            Command::GrantRole {
                role: Role::Act,
                ..
            }
        )
    })
}

/// docs/recovery.md §"Hosts": `HostDown` of the ACT's host commands `FenceHost`, demotes the ACT
/// at a new epoch, recreates it on a spare; the SBY is promoted only after `HostFenced` — not
/// when the recreated unit is up, not before; then `HostUp` of the fenced host destroys the
/// orphaned incarnation.
#[test]
fn act_host_down_fences_first_then_promotes_the_sby() {
    let mut h = Harness::new(Policy::DuplexRestart);
    h.advance(1_000);
    let r = h.host_down("h1");
    assert_eq!(r.notes[0], Note::HostLost { host: hid("h1") });
    assert!(r.notes.contains(&fault_note("a", Role::Act)));
    assert_eq!(
        actions(&r),
        vec![
            fence("h1"),
            recreate("a", "s1", 1, 2, Generation::Current),
            stop_duplex(2)
        ]
    );
    assert!(r.notes.contains(&Note::PromotionWaitsForFence {
        pair: pid(P),
        unit: uid("b"),
        waiting_for: vec!["a@h1".into()],
    }));
    let host = &h.st.hosts[&hid("h1")];
    assert!(!host.up);
    assert_eq!(host.fence, FenceState::Requested);
    assert!(host.orphans.contains(&uid("a")));
    assert_eq!(h.unit("a").restarts.get(&Phase::AutoHeal), Some(&1));
    assert_eq!(h.serving_act(), None);

    // The recreated unit is up: it joins as SBY; still no ACT before the fence.
    let r = h.up("a");
    assert!(
        !grants_act(&r.commands),
        "promoted before HostFenced: {:?}",
        r.commands
    );
    assert_eq!(h.serving_act(), None);
    assert_eq!(h.role("a"), Role::Sby);

    let r = h.host_fenced("h1");
    assert_eq!(r.notes[0], Note::HostFenced { host: hid("h1") });
    assert_eq!(
        actions(&r),
        vec![
            grant("b", "h2", Role::Act, 3),
            grant("a", "s1", Role::Sby, 3),
            resume_duplex("b", "a", 3)
        ]
    );
    assert_eq!(h.serving_act().as_deref(), Some("b"));
    assert_eq!(h.st.hosts[&hid("h1")].fence, FenceState::Done);

    // The host comes back: its stale incarnation of a is destroyed and it is clear again.
    let r = h.host_up("h1");
    assert_eq!(r.notes[0], Note::HostReturned { host: hid("h1") });
    assert_eq!(actions(&r), vec![destroy("a", "h1", 3)]);
    let host = &h.st.hosts[&hid("h1")];
    assert!(host.up && host.orphans.is_empty());
    assert_eq!(host.fence, FenceState::Clear);
}

/// docs/recovery.md §"Hosts": a host that returns before fencing was confirmed is sent
/// `FenceHost` again (its agent can hear it now); promotion and reclaim wait for `HostFenced`.
#[test]
fn a_host_back_before_the_fence_is_fenced_again_before_anything_else() {
    let mut h = Harness::new(Policy::DuplexRestart);
    h.host_down("h1");
    let r = h.host_up("h1");
    assert_eq!(actions(&r), vec![fence("h1")]);
    assert_eq!(h.serving_act(), None);
    assert!(
        !h.st.hosts[&hid("h1")].usable(h.now),
        "not usable until fenced"
    );

    let r = h.host_fenced("h1");
    assert_eq!(
        actions(&r),
        vec![destroy("a", "h1", 2), grant("b", "h2", Role::Act, 3)]
    );
    assert_eq!(h.st.hosts[&hid("h1")].fence, FenceState::Clear);
}

/// DESIGN.md §3 "Faults of the SBY ... never change the ACT": losing the SBY's host fences it and
/// heals the SBY onto a spare; the ACT keeps ACT at epoch 1, and the fence confirmation changes no
/// role.
#[test]
fn sby_host_down_heals_the_sby_and_leaves_the_act_alone() {
    let mut h = Harness::new(Policy::HotTakeover);
    let r = h.host_down("h2");
    assert!(r.notes.contains(&fault_note("b", Role::Sby)));
    assert_eq!(
        actions(&r),
        vec![
            fence("h2"),
            recreate("b", "s1", 1, 1, Generation::Current),
            stop_duplex(1)
        ]
    );
    assert_eq!(h.serving_act().as_deref(), Some("a"));
    let r = h.host_fenced("h2");
    assert!(r.commands.is_empty(), "{:?}", r.commands);
    let r = h.up("b");
    assert_eq!(
        actions(&r),
        vec![grant("b", "s1", Role::Sby, 1), resume_duplex("a", "b", 1)]
    );
    let r = h.host_up("h2");
    assert_eq!(actions(&r), vec![destroy("b", "h2", 1)]);
    assert!(!h.all_commands().iter().any(|c| touches_unit(c, "a")));
    assert_eq!(h.epoch(), ep(1));
}

/// docs/recovery.md §"Hosts": under the pure `escalation` policy an ACT on a lost host keeps
/// ACT and is recreated; its new incarnation is told ACT (at a new epoch) only after the old
/// host is fenced.
#[test]
fn under_escalation_the_act_of_a_lost_host_is_recreated_and_keeps_act_after_the_fence() {
    let mut h = Harness::new(Policy::Escalation);
    let r = h.host_down("h1");
    assert_eq!(
        actions(&r),
        vec![
            fence("h1"),
            recreate("a", "s1", 1, 1, Generation::Current),
            stop_duplex(1)
        ]
    );
    assert_eq!(h.role("a"), Role::Act);
    assert_eq!(h.role("b"), Role::Sby);
    let r = h.up("a");
    assert!(grants(&r).is_empty(), "{:?}", r.commands);
    assert!(r.notes.contains(&Note::PromotionWaitsForFence {
        pair: pid(P),
        unit: uid("a"),
        waiting_for: vec!["a@h1".into()],
    }));
    let r = h.host_fenced("h1");
    assert_eq!(
        actions(&r),
        vec![
            grant("a", "s1", Role::Act, 2),
            grant("b", "h2", Role::Sby, 2),
            resume_duplex("a", "b", 2)
        ]
    );
}

/// DESIGN.md §5: the `host-down` fault kind (auto-heal) reported for a unit is its host's loss.
#[test]
fn a_host_down_fault_of_a_unit_is_the_loss_of_its_host() {
    let mut h = Harness::new(Policy::DuplexRestart);
    let r = h.fault("a", FaultKind::HostDown);
    assert_eq!(r.notes[0], Note::HostLost { host: hid("h1") });
    assert_eq!(
        actions(&r),
        vec![
            fence("h1"),
            recreate("a", "s1", 1, 2, Generation::Current),
            stop_duplex(2)
        ]
    );
}

/// docs/recovery.md §"Hosts": a spare lost while a unit is being recreated on it is fenced, and
/// the unit moves on to another spare at once.
#[test]
fn losing_a_spare_during_a_recreate_moves_the_unit_to_another_spare() {
    let mut h = Harness::new(Policy::DuplexRestart);
    h.host_down("h2");
    assert_eq!(h.host_of("b"), Some(hid("s1")));
    let r = h.host_down("s1");
    assert_eq!(
        actions(&r),
        vec![fence("s1"), recreate("b", "s2", 2, 1, Generation::Current)]
    );
    assert_eq!(h.serving_act().as_deref(), Some("a"));
    let r = h.up("b");
    assert_eq!(
        actions(&r),
        vec![grant("b", "s2", Role::Sby, 1), resume_duplex("a", "b", 1)]
    );
}

/// docs/recovery.md §"Hosts": both hosts of a pair lost: both units are healed onto spares; the
/// first one up is ACT once both old hosts are fenced.
#[test]
fn both_hosts_lost_heals_both_and_promotes_after_both_fences() {
    let mut h = Harness::new(Policy::DuplexRestart);
    h.host_down("h1");
    h.host_down("h2");
    assert_eq!(
        (h.host_of("a"), h.host_of("b")),
        (Some(hid("s1")), Some(hid("s2")))
    );
    h.host_fenced("h2");
    let r = h.up("b");
    assert!(
        !grants_act(&r.commands),
        "h1 is not fenced yet: {:?}",
        r.commands
    );
    // b held ACT (waiting for h1's fence) when h2 went down: demoted again, epoch 3.
    let r = h.host_fenced("h1");
    assert_eq!(actions(&r), vec![grant("b", "s2", Role::Act, 4)]);
    let r = h.up("a");
    assert_eq!(
        actions(&r),
        vec![grant("a", "s1", Role::Sby, 4), resume_duplex("b", "a", 4)]
    );
}

/// docs/recovery.md §"Faults during a recovery": events naming unknown hosts are ignored; a
/// second `HostDown`, or a `HostFenced` nobody asked for, changes nothing.
#[test]
fn unknown_hosts_and_repeated_host_events_change_nothing() {
    let mut h = Harness::new(Policy::DuplexRestart);
    for event in [
        duplex_engine::Event::HostDown { host: hid("zz") },
        duplex_engine::Event::HostUp { host: hid("zz") },
        duplex_engine::Event::HostFenced { host: hid("zz") },
    ] {
        let r = h.step(event.clone());
        assert!(r.commands.is_empty(), "{event:?}");
        assert!(
            matches!(r.notes.as_slice(), [Note::Ignored { .. }]),
            "{event:?}: {:?}",
            r.notes
        );
    }
    let r = h.host_fenced("h1");
    assert!(r.commands.is_empty() && r.notes.is_empty(), "{r:?}");
    h.host_down("h1");
    let before = h.st.clone();
    let r = h.host_down("h1");
    assert!(r.commands.is_empty() && r.notes.is_empty(), "{r:?}");
    assert_eq!(h.st, before);
}
