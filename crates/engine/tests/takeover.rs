//! Policy `hot-takeover` (DESIGN.md §3 "Policies side by side": promote the SBY at once, heal
//! the old ACT onto a spare as the new SBY), with "fence first" and growing epochs (§3
//! "Split-brain safety").

mod common;

use common::*;
use duplex_engine::model::{FaultKind, Generation, Phase, Policy, Role};
use duplex_engine::{Command, Decision, Note};

/// DESIGN.md §3 hot-takeover: a watchdog of the ACT demotes it at a new epoch and recreates it
/// on a spare; the SBY is promoted with a newer epoch only after the old ACT incarnation
/// answered `Released`; the recreated unit comes up as SBY.
#[test]
fn watchdog_on_the_act_promotes_the_sby_after_release_and_heals_the_act_as_sby() {
    let mut h = Harness::new(Policy::HotTakeover);
    h.advance(1_000);
    let r = h.fault("a", FaultKind::Watchdog);
    assert_eq!(decision(&r), Decision::HotTakeover(Phase::Ph25));
    assert_eq!(
        actions(&r),
        vec![
            grant("a", "h1", Role::None, 2),
            destroy("a", "h1", 2),
            recreate("a", "s1", 1, 2, Generation::Current),
            stop_duplex(2),
        ]
    );
    assert!(r.notes.contains(&Note::PromotionWaitsForFence {
        pair: pid(P),
        unit: uid("b"),
        waiting_for: vec!["a@h1".into()],
    }));
    assert_eq!(h.serving_act(), None, "not promoted before the release");
    assert_eq!(h.unit("b").granted, Some((Role::Sby, ep(1))));
    assert!(!is_recovering(h.unit("b")), "the SBY is not restarted");

    h.advance(500);
    let r = h.released("a", "h1");
    assert_eq!(actions(&r), vec![grant("b", "h2", Role::Act, 3)]);
    assert_eq!(h.serving_act().as_deref(), Some("b"));

    h.advance(30_000);
    let r = h.up("a");
    assert_eq!(
        actions(&r),
        vec![grant("a", "s1", Role::Sby, 3), resume_duplex("b", "a", 3)]
    );
    assert_eq!((h.role("a"), h.role("b")), (Role::Sby, Role::Act));
    assert_eq!(h.host_of("a"), Some(hid("s1")));
    assert_eq!(h.unit("a").restarts.get(&Phase::Ph25), Some(&1));
    assert!(h.unit("b").restarts.is_empty());
}

/// DESIGN.md §3 "fence first": when the recreated unit is up before the old incarnation is
/// released, it joins as SBY; the promotion of the SBY still waits for the release.
#[test]
fn the_recreated_unit_up_before_the_release_does_not_unblock_the_promotion() {
    let mut h = Harness::new(Policy::HotTakeover);
    h.fault("a", FaultKind::OsPanic);
    let r = h.up("a");
    assert!(
        !r.commands.iter().any(|c| matches!(
            c,
            Command::GrantRole {
                role: Role::Act,
                ..
            }
        )),
        "{:?}",
        r.commands
    );
    assert_eq!(h.serving_act(), None);
    let r = h.released("a", "h1");
    assert_eq!(
        actions(&r),
        vec![
            grant("b", "h2", Role::Act, 3),
            grant("a", "s1", Role::Sby, 3),
            resume_duplex("b", "a", 3),
        ]
    );
}

/// DESIGN.md §3 hot-takeover + §1 ladder: faults below the threshold run the ladder with the
/// ACT keeping its role; when the ladder reaches the threshold (PH2.0 failed → PH2.5), the
/// takeover happens instead of an in-place OS restart.
#[test]
fn the_act_ladder_hands_over_when_it_reaches_the_threshold() {
    let mut h = Harness::new(Policy::HotTakeover);
    let r = h.fault("a", FaultKind::App);
    assert_eq!(decision(&r), Decision::Ladder(Phase::Ph10));
    assert_eq!(h.role("a"), Role::Act);
    let r = h.fail("a");
    assert_eq!(step_commands(&r), vec![restart_mw("a", "h1", 2, 1)]);
    assert_eq!(h.role("a"), Role::Act);

    let r = h.fail("a");
    // The ACT was mid-restart (not told a role), so it is not told the demotion; its old
    // incarnation is destroyed and must answer `Released` before the SBY is promoted.
    assert_eq!(
        actions(&r),
        vec![
            destroy("a", "h1", 2),
            recreate("a", "s1", 3, 2, Generation::Current)
        ]
    );
    assert_eq!(h.role("b"), Role::Act);
    assert_eq!(h.serving_act(), None);
    let r = h.released("a", "h1");
    assert_eq!(actions(&r), vec![grant("b", "h2", Role::Act, 3)]);
    let r = h.up("a");
    assert_eq!(
        actions(&r),
        vec![grant("a", "s1", Role::Sby, 3), resume_duplex("b", "a", 3)]
    );
}

/// DESIGN.md §3 hot-takeover "promote the SBY at once" needs a serving SBY; with the SBY itself
/// restarting, the engine falls back to the seed's duplex restart (S6–S8): the ACT is recreated
/// on a spare, the SBY's running step is its side of the race, and the first one up is ACT.
#[test]
fn without_a_serving_sby_hot_takeover_falls_back_to_the_duplex_restart() {
    let mut h = Harness::new(Policy::HotTakeover);
    h.fault("b", FaultKind::Process);
    let r = h.fault("a", FaultKind::Watchdog);
    assert_eq!(decision(&r), Decision::HotTakeover(Phase::Ph25));
    assert_eq!(
        actions(&r),
        vec![
            grant("a", "h1", Role::None, 2),
            destroy("a", "h1", 2),
            recreate("a", "s1", 1, 2, Generation::Current),
        ]
    );
    assert_eq!((h.role("a"), h.role("b")), (Role::None, Role::None));
    h.released("a", "h1");
    let r = h.up("b");
    assert_eq!(actions(&r), vec![grant("b", "h2", Role::Act, 3)]);
    let r = h.up("a");
    assert_eq!(
        actions(&r),
        vec![grant("a", "s1", Role::Sby, 3), resume_duplex("b", "a", 3)]
    );
}

/// DESIGN.md §3 "At most one ACT per pair per epoch, ever" across repeated takeovers: each
/// handover raises the epoch, and the ACT alternates.
#[test]
fn repeated_takeovers_alternate_the_act_with_growing_epochs() {
    let mut h = Harness::new(Policy::HotTakeover);
    h.fault("a", FaultKind::Watchdog);
    h.released("a", "h1");
    h.up("a");
    assert_eq!((h.serving_act().as_deref(), h.epoch()), (Some("b"), ep(3)));

    // The new ACT b (on h2) fails: a, now on s1, takes over; b goes to spare s2.
    let r = h.fault("b", FaultKind::Watchdog);
    assert_eq!(decision(&r), Decision::HotTakeover(Phase::Ph25));
    assert!(
        r.commands
            .contains(&recreate("b", "s2", 1, 4, Generation::Current))
    );
    h.released("b", "h2");
    assert_eq!((h.serving_act().as_deref(), h.epoch()), (Some("a"), ep(5)));
    h.up("b");
    assert!(h.pair().duplex);
    assert_eq!(
        (h.host_of("a"), h.host_of("b")),
        (Some(hid("s1")), Some(hid("s2")))
    );
}
