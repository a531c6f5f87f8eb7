//! Golden files (STYLE.md tests §2): the seed's case — a watchdog fault of the ACT caused by its
//! hardware, so no restart on the same host fixes it (DESIGN.md §1 "The flaw", §2) — under each
//! of the three policies (DESIGN.md §3 "Policies side by side"), as the full sequence of events
//! with the commands and notes each one produced. Regenerate with `INSTA_UPDATE=always cargo
//! test -p duplex-engine --test snapshots` (or `cargo insta review`) and review the diff.

mod common;

use common::*;
use duplex_engine::model::{FaultKind, Policy, Role};
use serde_json::{Value, json};

/// The log as JSON: one object per event with the time, the event, its commands and notes.
fn timeline(h: &Harness) -> Value {
    Value::Array(
        h.log
            .iter()
            .map(|e| {
                json!({
                    "at": e.at,
                    "event": e.event,
                    "commands": e.ready.commands,
                    "notes": e.ready.notes,
                })
            })
            .collect(),
    )
}

/// Policy `escalation` on the seed's case (DESIGN.md §1 "the conventional ladder walks every
/// phase before auto-heal"): PH2.5, PH3.0 and PH3.5 each fail on the broken host; auto-heal
/// recreates the ACT on spare s1, which is told ACT at epoch 2 once the old incarnation is
/// released; the SBY is never restarted and stays SBY.
#[test]
fn seed_case_under_escalation() {
    let mut h = Harness::new(Policy::Escalation);
    h.advance(1_000);
    h.fault("a", FaultKind::Watchdog);
    for _ in 0..3 {
        h.advance(60_000);
        h.fail("a");
    }
    h.advance(500);
    h.released("a", "h1");
    h.advance(60_000);
    h.up("a");
    assert_eq!(h.serving_act().as_deref(), Some("a"));
    assert_eq!((h.role("b"), h.epoch()), (Role::Sby, ep(2)));
    assert!(h.pair().duplex);
    insta::assert_json_snapshot!("seed_case_escalation", timeline(&h));
}

/// Policy `duplex-restart` on the seed's case (seed S5 YES → S6, S7, S8): duplex stops, both
/// units lose their roles at epoch 2; the ACT is recreated on spare s1 while the SBY reboots in
/// place, in one step; the old ACT is released; the SBY is up first and is ACT at epoch 3; the
/// recreated unit comes up later as SBY; duplex resumes.
#[test]
fn seed_case_under_duplex_restart() {
    let mut h = Harness::new(Policy::DuplexRestart);
    h.advance(1_000);
    h.fault("a", FaultKind::Watchdog);
    h.advance(500);
    h.released("a", "h1");
    h.advance(40_000);
    h.up("b");
    h.advance(20_000);
    h.up("a");
    assert_eq!(h.serving_act().as_deref(), Some("b"));
    assert_eq!((h.role("a"), h.epoch()), (Role::Sby, ep(3)));
    assert!(h.pair().duplex);
    insta::assert_json_snapshot!("seed_case_duplex_restart", timeline(&h));
}

/// Policy `hot-takeover` on the seed's case (DESIGN.md §3): the ACT is demoted at epoch 2 and
/// recreated on spare s1; once it is released the SBY is ACT at epoch 3; the recreated unit comes
/// up as SBY; duplex resumes.
#[test]
fn seed_case_under_hot_takeover() {
    let mut h = Harness::new(Policy::HotTakeover);
    h.advance(1_000);
    h.fault("a", FaultKind::Watchdog);
    h.advance(500);
    h.released("a", "h1");
    h.advance(60_000);
    h.up("a");
    assert_eq!(h.serving_act().as_deref(), Some("b"));
    assert_eq!((h.role("a"), h.epoch()), (Role::Sby, ep(3)));
    assert!(h.pair().duplex);
    insta::assert_json_snapshot!("seed_case_hot_takeover", timeline(&h));
}
