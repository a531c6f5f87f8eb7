//! The one error type of this crate.

use std::io;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a virtual-address operation failed. Every variant names the interface (and, where one
/// is involved, the address and the command with its stderr), so the message alone says what
/// to fix.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The prefix length does not fit the address family (IPv4: 1–32, IPv6: 1–128).
    #[error(
        "invalid prefix /{prefix} for virtual address {address} on {interface}: must be 1..={max}"
    )]
    InvalidPrefix {
        /// The virtual address.
        address: IpAddr,
        /// The rejected prefix length.
        prefix: u8,
        /// The largest prefix length of the address family.
        max: u8,
        /// The interface the address was meant for.
        interface: String,
    },

    /// An interface or network-namespace name that cannot be one (empty, too long, `/`,
    /// whitespace, a leading `-`, an alias label with `:`).
    #[error("invalid {what} name {name:?} for virtual address {address}: {reason}")]
    InvalidName {
        /// `"interface"` or `"network namespace"`.
        what: &'static str,
        /// The rejected name.
        name: String,
        /// The virtual address.
        address: IpAddr,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The interface does not exist on this host (or in the configured network namespace).
    #[error("interface {interface} does not exist on this host{} (virtual address {address})", in_netns(.netns.as_deref()))]
    InterfaceMissing {
        /// The missing interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// The network namespace looked in, if not the host's own.
        netns: Option<String>,
    },

    /// The address family has no announcement implemented: only IPv4 (gratuitous ARP) can be
    /// claimed.
    #[error(
        "virtual address {address} on {interface}: IPv6 is not supported (no unsolicited neighbour advertisement yet); use an IPv4 address"
    )]
    UnsupportedFamily {
        /// The virtual address.
        address: IpAddr,
        /// The interface.
        interface: String,
    },

    /// A command (`ip`, `arping`) could not be started.
    #[error("virtual address {address} on {interface}: cannot run `{command}`")]
    SpawnCommand {
        /// The command line.
        command: String,
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },

    /// A command did not finish in time; its process group was killed.
    #[error(
        "virtual address {address} on {interface}: `{command}` did not finish within {timeout:?} (killed)"
    )]
    CommandTimedOut {
        /// The command line.
        command: String,
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// How long it was given.
        timeout: Duration,
    },

    /// A command exited unsuccessfully.
    #[error("virtual address {address} on {interface}: `{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error, trimmed (its stdout stands in when stderr is empty).
        stderr: String,
    },

    /// A command's output could not be understood.
    #[error(
        "virtual address {address} on {interface}: unexpected output from `{command}`: {detail}"
    )]
    ParseOutput {
        /// The command line.
        command: String,
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// What was unexpected.
        detail: String,
    },

    /// The configured network namespace could not be entered.
    #[error("virtual address {address} on {interface}: cannot enter network namespace {netns}")]
    EnterNetns {
        /// The namespace (a name under `/run/netns`).
        netns: String,
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Sending the raw gratuitous ARP packet failed.
    #[error("virtual address {address} on {interface}: sending gratuitous ARP failed: {step}")]
    SendArp {
        /// The interface.
        interface: String,
        /// The virtual address.
        address: IpAddr,
        /// The step that failed.
        step: &'static str,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

fn in_netns(netns: Option<&str>) -> String {
    netns.map_or_else(String::new, |ns| format!(" (network namespace {ns})"))
}
