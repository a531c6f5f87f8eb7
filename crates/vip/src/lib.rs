//! The `vip` service-address mode (DESIGN.md §3, "service address takeover"), keepalived
//! style: the host holding a pair's ACT adds a virtual IP to an interface and announces it with
//! gratuitous ARP, so neighbours on the link send to its MAC at once; the host losing ACT
//! removes the address.
//!
//! ```no_run
//! use duplex_vip::Vip;
//!
//! let vip = Vip::new("192.0.2.10".parse().unwrap(), 32, "eth0");
//! vip.check()?; // at config load: the interface exists, the prefix fits
//! vip.claim()?; // on becoming ACT: add the address, send gratuitous ARP
//! assert!(vip.held()?);
//! vip.release()?; // on losing ACT: remove it ("not present" is fine)
//! # Ok::<(), duplex_vip::VipError>(())
//! ```
//!
//! The work is done by `ip` (iproute2) and, for the announcement, `arping` from iputils when it
//! is installed, else a raw ARP frame sent by this crate ([`Announcer`]). Every command runs
//! with a deadline and is killed (its whole process group) when it passes. All calls block:
//! from async code, run them on a blocking thread. They need `CAP_NET_ADMIN` (and
//! `CAP_NET_RAW` for the announcement).
//!
//! Limits: IPv4 only (an IPv6 address would need an unsolicited neighbour advertisement, which
//! is not implemented; [`Vip::check`] and [`Vip::claim`] refuse it). Whether another host on
//! the link already uses the address cannot be checked here.

#![deny(missing_docs)]

mod command;
mod error;
mod garp;
mod netns;
pub mod testnet;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub use error::VipError;

use command::{CommandLine, Finished, RunError};

/// Deadline of each `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of `arping -U -c 2` (which takes two seconds: it sends at 0 s and 1 s, then waits
/// one more interval before it exits).
const ARPING_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of `arping -V`, when probing which arping is installed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of work done on a thread inside a network namespace.
const NETNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Gratuitous ARP packets sent by `arping` (one second apart).
const ARPING_COUNT: &str = "2";
/// `IFNAMSIZ - 1`: the longest interface name Linux accepts.
const MAX_INTERFACE_NAME: usize = 15;

/// A virtual service address on an interface of this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The virtual address (IPv4; see the crate docs for IPv6).
    pub address: IpAddr,
    /// Its prefix length, as in `ADDRESS/PREFIX` (usually 32).
    pub prefix: u8,
    /// The interface it is added to, e.g. `eth0`.
    pub interface: String,
    /// Run everything inside this named network namespace (`ip netns add NAME`) instead of
    /// the host's own. `None` in production; tests and advanced setups set it.
    pub netns: Option<String>,
}

/// How a claimed address is announced to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcer {
    /// `arping -U -c 2 -I IFACE ADDR` from iputils (Debian `iputils-arping`): two unsolicited
    /// ARP requests, one second apart (the command takes two seconds).
    Arping,
    /// An ARP announcement and an unsolicited ARP reply, sent by this crate on a raw
    /// `AF_PACKET` socket, back to back.
    RawPacket,
}

impl Announcer {
    /// [`Announcer::Arping`] when `arping` on `PATH` is the iputils one (other arpings take
    /// different options), else [`Announcer::RawPacket`].
    #[must_use]
    pub fn detect() -> Self {
        let probe = CommandLine {
            program: "arping",
            args: vec!["-V".to_owned()],
        };
        match command::run(&probe, PROBE_TIMEOUT) {
            Ok(done) if done.stdout.contains("iputils") || done.stderr.contains("iputils") => {
                Self::Arping
            }
            Ok(_) | Err(_) => Self::RawPacket,
        }
    }
}

impl Vip {
    /// A virtual address on `interface` in the host's own network namespace.
    pub fn new(address: IpAddr, prefix: u8, interface: impl Into<String>) -> Self {
        Self {
            address,
            prefix,
            interface: interface.into(),
            netns: None,
        }
    }

    /// The same address, managed inside network namespace `netns`.
    #[must_use]
    pub fn in_netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// Validates the definition at config load: an IPv4 address, a prefix that fits it, a
    /// plausible interface name, and the interface exists (`/sys/class/net/IFACE`, or a lookup
    /// inside the configured namespace). Changes nothing.
    pub fn check(&self) -> Result<(), VipError> {
        self.validate()?;
        self.require_family()?;
        let exists = match &self.netns {
            None => Path::new("/sys/class/net").join(&self.interface).exists(),
            Some(netns) => {
                let interface = self.interface.clone();
                netns::run_in(netns, NETNS_TIMEOUT, move || {
                    nix::net::if_::if_nametoindex(interface.as_str()).is_ok()
                })
                .map_err(|source| self.enter_netns_error(netns, source))?
            }
        };
        if exists {
            Ok(())
        } else {
            Err(VipError::InterfaceMissing {
                interface: self.interface.clone(),
                address: self.address,
                netns: self.netns.clone(),
            })
        }
    }

    /// Takes the address: `ip addr replace ADDR/PREFIX dev IFACE`, then a gratuitous ARP with
    /// [`Announcer::detect`]'s choice. Idempotent: claiming an address already held re-adds
    /// nothing and announces again. With `arping` this blocks about two seconds; the first
    /// announcement leaves at once, so neighbours follow long before it returns.
    pub fn claim(&self) -> Result<(), VipError> {
        self.claim_with(Announcer::detect())
    }

    /// [`Vip::claim`] with a given way of announcing. If the announcement fails the address
    /// stays added and the error is returned: claiming again retries both steps.
    pub fn claim_with(&self, announcer: Announcer) -> Result<(), VipError> {
        self.validate()?;
        self.require_family()?;
        self.run_ok(&self.ip(&["addr", "replace", &self.cidr(), "dev", &self.interface]))?;
        self.announce(announcer)
    }

    /// Sends the gratuitous ARP for the address (already added) without touching it.
    pub fn announce(&self, announcer: Announcer) -> Result<(), VipError> {
        self.validate()?;
        let IpAddr::V4(address) = self.address else {
            return Err(self.unsupported_family());
        };
        match announcer {
            Announcer::Arping => {
                let arping = [
                    "-U",
                    "-c",
                    ARPING_COUNT,
                    "-I",
                    &self.interface,
                    &address.to_string(),
                ]
                .map(String::from);
                // In a namespace: `ip netns exec NETNS arping ...` (ip execs arping there).
                let line = match &self.netns {
                    None => CommandLine {
                        program: "arping",
                        args: arping.into(),
                    },
                    Some(netns) => CommandLine {
                        program: "ip",
                        args: ["netns", "exec", netns, "arping"]
                            .map(String::from)
                            .into_iter()
                            .chain(arping)
                            .collect(),
                    },
                };
                self.run_ok_within(&line, ARPING_TIMEOUT).map(drop)
            }
            Announcer::RawPacket => {
                let interface = self.interface.clone();
                let sent = match &self.netns {
                    None => garp::announce(&interface, address),
                    Some(netns) => netns::run_in(netns, NETNS_TIMEOUT, move || {
                        garp::announce(&interface, address)
                    })
                    .map_err(|source| self.enter_netns_error(netns, source))?,
                };
                sent.map_err(|(step, source)| VipError::SendArp {
                    interface: self.interface.clone(),
                    address: self.address,
                    step,
                    source,
                })
            }
        }
    }

    /// Gives the address up: `ip addr del ADDR/PREFIX dev IFACE`. Idempotent: an address that
    /// is not there is success (the interface must exist, though).
    pub fn release(&self) -> Result<(), VipError> {
        self.validate()?;
        let line = self.ip(&["addr", "del", &self.cidr(), "dev", &self.interface]);
        let done = self.run(&line, IP_TIMEOUT)?;
        if done.status.success() {
            return Ok(());
        }
        // Rather than trusting the wording of "not there" (EADDRNOTAVAIL), look: if the
        // address is gone, the release did what it should.
        match self.held() {
            Ok(false) => Ok(()),
            Ok(true) | Err(_) => Err(self.failed(&line, &done)),
        }
    }

    /// Whether the address (with this prefix) is on the interface now.
    pub fn held(&self) -> Result<bool, VipError> {
        self.validate()?;
        let family = if self.address.is_ipv4() { "-4" } else { "-6" };
        let line = self.ip(&["-o", family, "addr", "show", "dev", &self.interface]);
        let done = self.run_ok(&line)?;
        Ok(addresses(&done.stdout).contains(&(self.address, self.prefix)))
    }

    /// `ADDR/PREFIX`.
    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix)
    }

    /// Checks what needs no system access: the prefix and the names.
    fn validate(&self) -> Result<(), VipError> {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 || self.prefix > max {
            return Err(VipError::InvalidPrefix {
                address: self.address,
                prefix: self.prefix,
                max,
                interface: self.interface.clone(),
            });
        }
        let name_error = |what, name: &str, reason| VipError::InvalidName {
            what,
            name: name.to_owned(),
            address: self.address,
            reason,
        };
        if let Err(reason) = check_name(&self.interface, MAX_INTERFACE_NAME) {
            return Err(name_error("interface", &self.interface, reason));
        }
        if self.interface.contains(':') {
            return Err(name_error(
                "interface",
                &self.interface,
                "alias labels (`:`) are not interfaces; name the interface itself",
            ));
        }
        if let Some(netns) = &self.netns {
            check_name(netns, 255)
                .map_err(|reason| name_error("network namespace", netns, reason))?;
        }
        Ok(())
    }

    fn require_family(&self) -> Result<(), VipError> {
        if self.address.is_ipv4() {
            Ok(())
        } else {
            Err(self.unsupported_family())
        }
    }

    fn unsupported_family(&self) -> VipError {
        VipError::UnsupportedFamily {
            address: self.address,
            interface: self.interface.clone(),
        }
    }

    /// `ip [-n NETNS] ARGS...`.
    fn ip(&self, args: &[&str]) -> CommandLine {
        let mut all = Vec::with_capacity(args.len() + 2);
        if let Some(netns) = &self.netns {
            all.push("-n".to_owned());
            all.push(netns.clone());
        }
        all.extend(args.iter().map(|arg| (*arg).to_owned()));
        CommandLine {
            program: "ip",
            args: all,
        }
    }

    fn run(&self, line: &CommandLine, timeout: Duration) -> Result<Finished, VipError> {
        command::run(line, timeout).map_err(|error| match error {
            RunError::Spawn(source) => VipError::SpawnCommand {
                command: line.display(),
                interface: self.interface.clone(),
                address: self.address,
                source,
            },
            RunError::TimedOut => VipError::CommandTimedOut {
                command: line.display(),
                interface: self.interface.clone(),
                address: self.address,
                timeout,
            },
        })
    }

    fn run_ok(&self, line: &CommandLine) -> Result<Finished, VipError> {
        self.run_ok_within(line, IP_TIMEOUT)
    }

    fn run_ok_within(&self, line: &CommandLine, timeout: Duration) -> Result<Finished, VipError> {
        let done = self.run(line, timeout)?;
        if done.status.success() {
            Ok(done)
        } else {
            Err(self.failed(line, &done))
        }
    }

    fn failed(&self, line: &CommandLine, done: &Finished) -> VipError {
        VipError::CommandFailed {
            command: line.display(),
            interface: self.interface.clone(),
            address: self.address,
            status: done.status,
            stderr: for_message(&done.stderr, &done.stdout),
        }
    }

    fn enter_netns_error(&self, netns: &str, source: std::io::Error) -> VipError {
        VipError::EnterNetns {
            netns: netns.to_owned(),
            interface: self.interface.clone(),
            address: self.address,
            source,
        }
    }
}

/// Whether `name` can be an interface or namespace name: it is passed as an argument to `ip`
/// and `arping` and joined to `/sys/class/net`, so no option look-alikes, no path tricks, no
/// whitespace.
fn check_name(name: &str, max_len: usize) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() > max_len {
        Err("too long")
    } else if name == "." || name == ".." || name.contains('/') {
        Err("contains `/` or is `.`/`..`")
    } else if name.starts_with('-') {
        Err("starts with `-`")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("contains whitespace or control characters")
    } else {
        Ok(())
    }
}

/// A failed command's stderr for an error message: trimmed, bounded, never empty. Some tools
/// (arping) report on stdout, which stands in when stderr is empty.
fn for_message(stderr: &str, stdout: &str) -> String {
    const MAX: usize = 2000;
    let (stderr, stdout) = (stderr.trim(), stdout.trim());
    let text = match (stderr.is_empty(), stdout.is_empty()) {
        (false, _) => stderr.to_owned(),
        (true, false) => format!("(no stderr; stdout: {stdout})"),
        (true, true) => return "(no output)".to_owned(),
    };
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The `(address, prefix)` pairs in `ip -o addr show` output: the token after each `inet` or
/// `inet6`, as `ADDR/PREFIX`.
fn addresses(output: &str) -> Vec<(IpAddr, u8)> {
    let mut found = Vec::new();
    for line in output.lines() {
        let mut tokens = line.split_whitespace();
        while let Some(token) = tokens.next() {
            if token != "inet" && token != "inet6" {
                continue;
            }
            let Some(cidr) = tokens.next() else { break };
            let parsed = match cidr.split_once('/') {
                Some((address, prefix)) => address.parse().ok().zip(prefix.parse().ok()),
                None => cidr
                    .parse::<IpAddr>()
                    .ok()
                    .map(|address| (address, if address.is_ipv4() { 32 } else { 128 })),
            };
            found.extend(parsed);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(prefix: u8, interface: &str) -> Vip {
        Vip::new("10.77.1.100".parse().unwrap(), prefix, interface)
    }

    #[test]
    fn addresses_parses_ip_one_line_output() {
        let output = "\
2: eth0    inet 10.77.1.1/24 brd 10.77.1.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.77.1.100/32 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::77:ff:fe00:1/64 scope link \\       valid_lft forever preferred_lft forever
";
        assert_eq!(
            addresses(output),
            vec![
                ("10.77.1.1".parse().unwrap(), 24),
                ("10.77.1.100".parse().unwrap(), 32),
                ("fe80::77:ff:fe00:1".parse().unwrap(), 64),
            ]
        );
        assert!(addresses("").is_empty());
        assert!(addresses("2: eth0 inet").is_empty());
    }

    #[test]
    fn validate_accepts_prefixes_of_the_family_only() {
        for prefix in [1, 24, 32] {
            vip(prefix, "eth0").validate().unwrap();
        }
        for prefix in [0, 33, 255] {
            let error = vip(prefix, "eth0").validate().unwrap_err();
            assert!(
                matches!(error, VipError::InvalidPrefix { max: 32, .. }),
                "{error}"
            );
        }
        let v6 = Vip::new("2001:db8::1".parse().unwrap(), 128, "eth0");
        v6.validate().unwrap();
        let error = Vip { prefix: 129, ..v6 }.validate().unwrap_err();
        assert!(
            matches!(error, VipError::InvalidPrefix { max: 128, .. }),
            "{error}"
        );
    }

    #[test]
    fn validate_rejects_names_that_are_not_names() {
        for bad in [
            "",
            "eth0 up",
            "../../etc",
            "..",
            "-foo",
            "eth0:1",
            "abcdefghijklmnop",
        ] {
            let error = vip(32, bad).validate().unwrap_err();
            assert!(
                matches!(
                    error,
                    VipError::InvalidName {
                        what: "interface",
                        ..
                    }
                ),
                "{bad:?}: {error}"
            );
        }
        let error = vip(32, "eth0").in_netns("a/b").validate().unwrap_err();
        assert!(
            matches!(
                error,
                VipError::InvalidName {
                    what: "network namespace",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn ip_runs_in_the_namespace_when_one_is_set() {
        let line = vip(32, "eth0").in_netns("hA").ip(&["addr", "show"]);
        assert_eq!(line.display(), "ip -n hA addr show");
        assert_eq!(vip(32, "eth0").ip(&["addr"]).display(), "ip addr");
    }

    #[test]
    fn command_output_in_messages_is_trimmed_and_never_empty() {
        assert_eq!(for_message("  \n", ""), "(no output)");
        assert_eq!(
            for_message("RTNETLINK answers: nope\n", "x"),
            "RTNETLINK answers: nope"
        );
        assert_eq!(
            for_message("", "Interface \"lo\" is not ARPable\n"),
            "(no stderr; stdout: Interface \"lo\" is not ARPable)"
        );
        assert_eq!(for_message(&"x".repeat(5000), "").chars().count(), 2001);
    }
}
