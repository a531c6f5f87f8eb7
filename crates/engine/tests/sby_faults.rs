//! DESIGN.md §3 "Faults of the SBY run their own ladder and never change the ACT", under every
//! policy and for every fault kind, all the way to auto-heal.

mod common;

use common::*;
use duplex_engine::model::{FaultKind, Phase, Policy, Role};
use duplex_engine::{Action, Decision};

/// DESIGN.md §3: for each policy and each fault kind, the SBY climbs its own ladder (failing
/// every step up to auto-heal on a spare, then coming up there). After every step the ACT holds
/// ACT at epoch 1 as it was told at start, and no command ever addresses it.
#[test]
fn sby_faults_never_change_the_act_under_any_policy() {
    let kinds = [
        FaultKind::Process,
        FaultKind::App,
        FaultKind::Middleware,
        FaultKind::Watchdog,
        FaultKind::OsPanic,
        FaultKind::DataCorrupt,
    ];
    for policy in Policy::ALL {
        for kind in kinds {
            let mut h = Harness::new(policy);
            let act_is_untouched = |h: &Harness| {
                let a = h.unit("a");
                a.role == Role::Act
                    && a.granted == Some((Role::Act, ep(1)))
                    && h.epoch() == ep(1)
                    && h.serving_act().as_deref() == Some("a")
            };
            let r = h.fault("b", kind);
            assert!(
                matches!(decision(&r), Decision::Ladder(_)),
                "{policy}/{kind}: {:?}",
                decision(&r)
            );
            assert!(act_is_untouched(&h), "{policy}/{kind}");
            let mut rungs = 0;
            while !matches!(
                h.unit("b").step().map(|s| s.action),
                Some(Action::Recreate(_))
            ) {
                h.fail("b");
                assert!(act_is_untouched(&h), "{policy}/{kind} after a failed step");
                rungs += 1;
                assert!(rungs < 7, "{policy}/{kind}: the ladder does not end");
            }
            assert_eq!(h.unit("b").ladder, Some(Phase::AutoHeal), "{policy}/{kind}");
            assert_eq!(h.host_of("b"), Some(hid("s1")));
            let r = h.up("b");
            assert_eq!(
                actions(&r),
                vec![grant("b", "s1", Role::Sby, 1), resume_duplex("a", "b", 1)],
                "{policy}/{kind}"
            );
            assert!(act_is_untouched(&h), "{policy}/{kind} at the end");
            assert!(
                !h.all_commands().iter().any(|c| touches_unit(c, "a")),
                "{policy}/{kind}: a command addressed the ACT"
            );
        }
    }
}

/// DESIGN.md §3: an OS-level fault of the SBY is not a reason for a duplex restart or a
/// takeover, whatever the policy: the SBY reboots in place.
#[test]
fn an_os_fault_of_the_sby_reboots_it_in_place_under_every_policy() {
    for policy in Policy::ALL {
        let mut h = Harness::new(policy);
        let r = h.fault("b", FaultKind::Watchdog);
        assert_eq!(decision(&r), Decision::Ladder(Phase::Ph25), "{policy}");
        assert_eq!(
            actions(&r),
            vec![
                reboot_os("b", "h2", 1, 1, duplex_engine::model::Generation::Current),
                stop_duplex(1)
            ],
            "{policy}"
        );
        assert_eq!(h.role("b"), Role::Sby, "{policy}");
    }
}
