//! Gratuitous ARP without external tools: an ARP announcement sent on an `AF_PACKET` raw
//! socket, the fallback when `arping` from iputils is not installed.
//!
//! Safe code only: the interface's index and MAC come from `getifaddrs` as a link-layer
//! address, which is also what the socket is bound to, so no `sockaddr_ll` is built by hand.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, bind, send, socket};

/// `ARPHRD_ETHER`: the only link type an Ethernet ARP frame makes sense on.
const ARPHRD_ETHER: u16 = 1;
/// Ethernet's minimum frame length without the frame check sequence.
const FRAME_LEN: usize = 60;

/// Which of the two gratuitous ARP forms to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// An ARP request for the address itself (RFC 5227 "ARP announcement").
    Request,
    /// An unsolicited ARP reply, for neighbours that only learn from replies.
    Reply,
}

/// Builds a broadcast gratuitous ARP frame saying "`address` is at `mac`".
pub(crate) fn frame(mac: [u8; 6], address: Ipv4Addr, form: Form) -> [u8; FRAME_LEN] {
    let (opcode, target_mac) = match form {
        Form::Request => (1u16, [0u8; 6]),
        Form::Reply => (2u16, [0xff; 6]),
    };
    let mut frame = [0u8; FRAME_LEN];
    let mut parts: Vec<&[u8]> = Vec::with_capacity(12);
    let ip = address.octets();
    let opcode = opcode.to_be_bytes();
    parts.extend([
        &[0xff; 6][..],  // destination: broadcast
        &mac[..],        // source
        &[0x08, 0x06],   // EtherType ARP
        &[0x00, 0x01],   // hardware type Ethernet
        &[0x08, 0x00],   // protocol type IPv4
        &[6, 4],         // hardware and protocol address lengths
        &opcode[..],     // operation
        &mac[..],        // sender hardware address
        &ip[..],         // sender protocol address
        &target_mac[..], // target hardware address
        &ip[..],         // target protocol address: the same, which makes it gratuitous
    ]);
    let mut at = 0;
    for part in parts {
        frame[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    frame
}

/// Sends an announcement and an unsolicited reply for `address` on `interface`, in the calling
/// thread's network namespace. The error names the step that failed.
pub(crate) fn announce(
    interface: &str,
    address: Ipv4Addr,
) -> Result<(), (&'static str, io::Error)> {
    let link = link_address(interface)?;
    let mac = link.addr().ok_or((
        "reading the interface's hardware address",
        io::Error::other("no hardware address"),
    ))?;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| ("opening an AF_PACKET socket", io::Error::from(errno)))?;
    bind(fd.as_raw_fd(), &link).map_err(|errno| {
        (
            "binding the packet socket to the interface",
            io::Error::from(errno),
        )
    })?;
    for form in [Form::Request, Form::Reply] {
        send(
            fd.as_raw_fd(),
            &frame(mac, address, form),
            MsgFlags::empty(),
        )
        .map_err(|errno| ("sending the ARP frame", io::Error::from(errno)))?;
    }
    Ok(())
}

/// The interface's link-layer address (index, type and MAC) from `getifaddrs`.
fn link_address(interface: &str) -> Result<LinkAddr, (&'static str, io::Error)> {
    const STEP: &str = "looking up the interface's link-layer address";
    let addresses = getifaddrs().map_err(|errno| (STEP, io::Error::from(errno)))?;
    let link = addresses
        .filter(|entry| entry.interface_name == interface)
        .find_map(|entry| {
            entry
                .address
                .and_then(|address| address.as_link_addr().copied())
        })
        .ok_or((
            STEP,
            io::Error::new(io::ErrorKind::NotFound, "no such interface"),
        ))?;
    if link.hatype() != ARPHRD_ETHER || link.halen() != 6 {
        return Err((
            STEP,
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("not an Ethernet interface (link type {})", link.hatype()),
            ),
        ));
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];

    #[test]
    fn request_frame_is_an_rfc5227_announcement() {
        let frame = frame(MAC, Ipv4Addr::new(10, 77, 1, 100), Form::Request);
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x02, 0x77, 0, 0, 0, 0x01, // source
            0x08, 0x06, // ARP
            0, 1, 0x08, 0, 6, 4, // Ethernet / IPv4
            0, 1, // request
            0x02, 0x77, 0, 0, 0, 0x01, 10, 77, 1, 100, // sender
            0, 0, 0, 0, 0, 0, 10, 77, 1, 100, // target
        ];
        assert_eq!(frame[..42], expected);
        assert!(frame[42..].iter().all(|byte| *byte == 0), "padding");
    }

    #[test]
    fn reply_frame_targets_broadcast() {
        let frame = frame(MAC, Ipv4Addr::new(192, 0, 2, 7), Form::Reply);
        assert_eq!(frame[20..22], [0, 2]);
        assert_eq!(frame[32..38], [0xff; 6]);
        assert_eq!(frame[38..42], [192, 0, 2, 7]);
    }
}
