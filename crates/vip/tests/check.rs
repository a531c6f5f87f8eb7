//! Bad definitions are refused at config load, before anything is changed.

use duplex_vip::{Vip, VipError};

fn v4(prefix: u8, interface: &str) -> Vip {
    Vip::new("192.0.2.10".parse().unwrap(), prefix, interface)
}

#[test]
fn check_rejects_an_interface_that_does_not_exist() {
    let error = v4(32, "eth9").check().unwrap_err();
    assert!(
        matches!(error, VipError::InterfaceMissing { ref interface, .. } if interface == "eth9"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "interface eth9 does not exist on this host (virtual address 192.0.2.10)"
    );
}

#[test]
fn check_rejects_a_prefix_the_family_cannot_have() {
    for prefix in [0, 33] {
        let error = v4(prefix, "lo").check().unwrap_err();
        assert!(matches!(error, VipError::InvalidPrefix { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "invalid prefix /{prefix} for virtual address 192.0.2.10 on lo: must be 1..=32"
            )
        );
    }
}

#[test]
fn check_accepts_an_existing_interface() {
    // Every Linux network namespace has `lo`.
    v4(32, "lo").check().unwrap();
}

#[test]
fn check_rejects_names_that_could_escape_sys_class_net() {
    let error = v4(32, "../../dev").check().unwrap_err();
    assert!(matches!(error, VipError::InvalidName { .. }), "{error:?}");
    assert!(error.to_string().contains("\"../../dev\""), "{error}");
}

#[test]
fn check_rejects_ipv6_for_now() {
    let error = Vip::new("2001:db8::10".parse().unwrap(), 128, "lo")
        .check()
        .unwrap_err();
    assert!(
        matches!(error, VipError::UnsupportedFamily { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("IPv6 is not supported"),
        "{error}"
    );
}

#[test]
fn check_names_a_network_namespace_that_does_not_exist() {
    let error = v4(32, "eth0")
        .in_netns("duplex-vip-no-such-namespace")
        .check()
        .unwrap_err();
    assert!(matches!(error, VipError::EnterNetns { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("cannot enter network namespace duplex-vip-no-such-namespace"),
        "{error}"
    );
}
