//! Policy `escalation` (DESIGN.md §3 "Policies side by side": the conventional ladder, §1
//! table): an OS-level fault of the ACT walks PH2.5 → PH3.0 → PH3.5 → auto-heal in place while
//! the ACT keeps its role; the SBY stays SBY and gets no restart.

mod common;

use common::*;
use duplex_engine::model::{FaultKind, Generation, Phase, Policy, Role};
use duplex_engine::{Command, Decision, Note};

/// DESIGN.md §1 "the flaw": with the conventional ladder the seed's hardware-caused watchdog
/// fault goes through every in-place rung before auto-heal. The ACT keeps ACT throughout (it
/// is only promoted again, at a new epoch, as a new incarnation on the spare after the old one
/// is released); the SBY never gets a step command and never changes role.
#[test]
fn watchdog_on_the_act_walks_every_rung_to_auto_heal_and_keeps_the_act() {
    let mut h = Harness::new(Policy::Escalation);
    let r = h.fault("a", FaultKind::Watchdog);
    assert_eq!(decision(&r), Decision::Ladder(Phase::Ph25));
    assert_eq!(
        actions(&r),
        vec![
            reboot_os("a", "h1", 1, 1, Generation::Current),
            stop_duplex(1)
        ]
    );
    assert_eq!(
        (h.role("a"), h.role("b"), h.epoch()),
        (Role::Act, Role::Sby, ep(1))
    );

    let rungs = [
        (
            Phase::Ph30,
            vec![reboot_os("a", "h1", 2, 1, Generation::Laf)],
        ),
        (
            Phase::Ph35,
            vec![reboot_os("a", "h1", 3, 1, Generation::Ref)],
        ),
        (
            Phase::AutoHeal,
            vec![
                destroy("a", "h1", 1),
                recreate("a", "s1", 4, 1, Generation::Current),
            ],
        ),
    ];
    for (phase, expected) in rungs {
        h.advance(300_000);
        let r = h.fail("a");
        assert_eq!(actions(&r), expected, "{phase}");
        assert!(started(&r, "a", phase), "{phase}");
        assert_eq!(
            (h.role("a"), h.role("b"), h.epoch()),
            (Role::Act, Role::Sby, ep(1)),
            "{phase}"
        );
        assert_eq!(h.unit("a").ladder, Some(phase));
    }
    for phase in [Phase::Ph25, Phase::Ph30, Phase::Ph35, Phase::AutoHeal] {
        assert_eq!(h.unit("a").restarts.get(&phase), Some(&1), "{phase}");
    }

    // The recreated incarnation is up before the old one is confirmed gone: it waits.
    let r = h.up("a");
    assert!(grants(&r).is_empty(), "{:?}", r.commands);
    assert!(r.notes.contains(&Note::PromotionWaitsForFence {
        pair: pid(P),
        unit: uid("a"),
        waiting_for: vec!["a@h1".into()],
    }));
    let r = h.released("a", "h1");
    assert_eq!(
        actions(&r),
        vec![
            grant("a", "s1", Role::Act, 2),
            grant("b", "h2", Role::Sby, 2),
            resume_duplex("a", "b", 2)
        ]
    );
    assert_eq!(h.serving_act().as_deref(), Some("a"));

    // The SBY got no step, no destroy and never another role than SBY.
    for c in h.all_commands() {
        let restarted = matches!(
            &c,
            Command::RebootOs { target, .. } | Command::Recreate { target, .. }
                if target.unit == uid("b")
        );
        assert!(!restarted, "the SBY was restarted: {c:?}");
        if let Command::GrantRole { unit, role, .. } = &c {
            assert!(
                *unit != uid("b") || *role == Role::Sby,
                "the SBY lost its role: {c:?}"
            );
        }
        assert!(!matches!(&c, Command::DestroyUnit { unit, .. } if *unit == uid("b")));
    }
    assert!(h.unit("b").restarts.is_empty());
}

/// DESIGN.md §3 policy `escalation`: an in-place step that succeeds hands the same incarnation
/// its ACT role back at the same epoch (no change of holder, no new epoch).
#[test]
fn an_in_place_restart_of_the_act_keeps_its_epoch() {
    let mut h = Harness::new(Policy::Escalation);
    h.fault("a", FaultKind::OsPanic);
    let r = h.up("a");
    assert_eq!(
        actions(&r),
        vec![grant("a", "h1", Role::Act, 1), resume_duplex("a", "b", 1)]
    );
    assert_eq!(h.epoch(), ep(1));
}

/// DESIGN.md §1: timeouts escalate exactly like failures; without PH3.5 the ladder goes from
/// PH3.0 to auto-heal.
#[test]
fn timeouts_escalate_the_act_and_ph35_can_be_skipped() {
    let cfg = duplex_engine::EngineConfig {
        policy: Policy::Escalation,
        ph35: false,
        ..duplex_engine::EngineConfig::default()
    };
    let mut h = Harness::with_config(cfg);
    h.fault("a", FaultKind::Watchdog);
    let r = h.time_out("a");
    assert_eq!(
        actions(&r),
        vec![reboot_os("a", "h1", 2, 1, Generation::Laf)]
    );
    let r = h.time_out("a");
    assert_eq!(
        actions(&r),
        vec![
            destroy("a", "h1", 1),
            recreate("a", "s1", 3, 1, Generation::Current)
        ]
    );
    assert_eq!(h.role("a"), Role::Act);
}
