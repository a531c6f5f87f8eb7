//! System test: a virtual IP moves between two "hosts" and a client on the same link follows.
//!
//! Everything happens in network namespaces this test creates (never on the machine's own
//! interfaces): `hA`, `hB` and `client`, each with an `eth0` that is one end of a veth pair
//! whose other end is a port of bridge `br0` in a fourth namespace, `br`. Addresses are
//! 10.77.N.1/.2/.3 with N = pid % 200; the VIP is 10.77.N.100/32. Each host runs a TCP server
//! (a thread inside its namespace) that answers with the host's name.
//!
//! 1. `claim` in hA → a new connection from `client` to VIP is answered by hA.
//! 2. `release` in hA, `claim` in hB (arping) → the client's neighbour entry for VIP shows
//!    hB's MAC (gratuitous ARP) and a new connection is answered by hB, within a deadline.
//! 3. `release` in hB and the address added in hA by hand, unannounced: the client does not
//!    follow (a control: the announcement is what moves it); then `claim` in hA with the
//!    raw-packet announcer → back to hA.
//!
//! Needs root, iproute2 (`ip netns`) and iputils-arping; without them it prints "skipped: …",
//! or fails naming the package when `DUPLEX_SYSTEM_TESTS=1`. A drop guard deletes every
//! namespace (which removes the veths and the bridge) and stops the servers, also on failure;
//! the test then checks that none of its namespaces is left.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duplex_vip::testnet::{ip, must, prerequisites, remove_leftovers};
use duplex_vip::{Announcer, Vip};
use nix::sched::{CloneFlags, setns};

const PORT: u16 = 7777;
const MAC_A: &str = "02:77:00:00:00:01";
const MAC_B: &str = "02:77:00:00:00:02";
const MAC_CLIENT: &str = "02:77:00:00:00:03";
/// How long the client may take to follow a move (neighbour entry and a new connection).
const FOLLOW_DEADLINE: Duration = Duration::from_secs(5);
/// How long the client is watched not following a move made without an announcement.
const SILENT_WINDOW: Duration = Duration::from_millis(300);

#[test]
fn vip_moves_between_namespaces_and_the_client_follows() {
    if let Err(missing) = prerequisites() {
        if std::env::var("DUPLEX_SYSTEM_TESTS").as_deref() == Ok("1") {
            panic!("system test prerequisite missing (DUPLEX_SYSTEM_TESTS=1): {missing}");
        }
        eprintln!("skipped: {missing}");
        return;
    }
    let started = Instant::now();
    let lab = Lab::new();
    let names = lab.namespaces();
    run_scenario(&lab);
    drop(lab);
    let left: Vec<String> = ip(&["netns", "list"])
        .expect("ip netns list")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| names.iter().any(|ours| ours == ns))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!(
        "total (setup, three moves, cleanup): {:?}",
        started.elapsed()
    );
}

fn run_scenario(lab: &Lab) {
    let vip_addr = lab.address(100);
    let vip = SocketAddr::new(IpAddr::V4(vip_addr), PORT);
    let vip_a = Vip::new(IpAddr::V4(vip_addr), 32, "eth0").in_netns(&lab.ha);
    let vip_b = Vip::new(IpAddr::V4(vip_addr), 32, "eth0").in_netns(&lab.hb);

    // Definitions check out where the interface exists, and not where it does not.
    vip_a.check().unwrap();
    vip_b.check().unwrap();
    let missing = Vip {
        interface: "eth9".to_owned(),
        ..vip_a.clone()
    };
    assert_eq!(
        missing.check().unwrap_err().to_string(),
        format!(
            "interface eth9 does not exist on this host (network namespace {}) \
             (virtual address {vip_addr})",
            lab.ha
        )
    );
    assert_eq!(Announcer::detect(), Announcer::Arping);

    // Releasing what is not held is success.
    assert!(!vip_a.held().unwrap());
    vip_a.release().unwrap();

    // 1. hA claims; claiming again changes nothing.
    let claim_started = Instant::now();
    vip_a.claim().unwrap();
    let claim_a = claim_started.elapsed();
    vip_a.claim_with(Announcer::RawPacket).unwrap();
    assert!(vip_a.held().unwrap());
    assert!(!vip_b.held().unwrap());
    let answer = until(FOLLOW_DEADLINE, || fetch(&lab.client, vip).ok());
    assert_eq!(
        answer.as_deref(),
        Some("hA"),
        "client → VIP before any move"
    );
    assert_eq!(neighbour(lab, vip_addr).as_deref(), Some(MAC_A));

    // 2. Move to hB, announced by arping.
    let to_b = follow(lab, vip, MAC_B, "hB", || {
        vip_a.release().unwrap();
        vip_a.release().unwrap();
        assert!(!vip_a.held().unwrap());
        vip_b.claim().unwrap();
        assert!(vip_b.held().unwrap());
    });

    // Control: the announcement is what moves the client. Moved without one, the address is
    // not found by the client for a while (its neighbour entry is fresh and still says hB).
    vip_b.release().unwrap();
    must(&[
        "-n",
        &lab.ha,
        "addr",
        "replace",
        &format!("{vip_addr}/32"),
        "dev",
        "eth0",
    ]);
    let moved_silently = until(SILENT_WINDOW, || {
        (neighbour(lab, vip_addr).as_deref() != Some(MAC_B) || fetch(&lab.client, vip).is_ok())
            .then_some(())
    });
    assert!(
        moved_silently.is_none(),
        "client followed without an announcement: the test would not show that it works"
    );

    // 3. Claimed in hA (where it is already added: claiming is idempotent) and announced by
    //    the raw packet: the client comes back.
    let to_a = follow(lab, vip, MAC_A, "hA", || {
        vip_a.claim_with(Announcer::RawPacket).unwrap();
    });
    assert!(!vip_b.held().unwrap());
    vip_a.release().unwrap();
    assert!(!vip_a.held().unwrap());

    eprintln!("claim in hA (arping -U -c 2): {claim_a:?}");
    eprintln!("hA → hB (arping):     {to_b}");
    eprintln!("hB → hA (raw packet): {to_a}");
}

/// How long a move took, measured from the start of release + claim.
struct Followed {
    moved: Duration,
    neighbour: Duration,
    connection: Duration,
}

impl std::fmt::Display for Followed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the move returned after {:?}; client's neighbour entry followed after {:?}, \
             a new connection after {:?}",
            self.moved, self.neighbour, self.connection
        )
    }
}

/// Runs `moving` while watching, from the client, for the VIP's neighbour entry to show `mac`
/// and for a new connection to be answered by `host`.
fn follow(lab: &Lab, vip: SocketAddr, mac: &str, host: &str, moving: impl FnOnce()) -> Followed {
    let IpAddr::V4(vip_addr) = vip.ip() else {
        unreachable!("the test's VIP is IPv4")
    };
    let t0 = Instant::now();
    let neighbour_watch = {
        let (client, mac) = (lab.client.clone(), mac.to_owned());
        thread::spawn(move || {
            until(FOLLOW_DEADLINE, || {
                (neighbour_in(&client, vip_addr).as_deref() == Some(mac.as_str()))
                    .then(|| t0.elapsed())
            })
        })
    };
    let connection_watch = {
        let (client, host) = (lab.client.clone(), host.to_owned());
        thread::spawn(move || {
            until(FOLLOW_DEADLINE, || {
                (fetch(&client, vip).ok().as_deref() == Some(host.as_str())).then(|| t0.elapsed())
            })
        })
    };
    moving();
    let moved = t0.elapsed();
    let neighbour = neighbour_watch.join().unwrap();
    let connection = connection_watch.join().unwrap();
    let (Some(neighbour), Some(connection)) = (neighbour, connection) else {
        panic!(
            "client did not follow the VIP to {host} within {FOLLOW_DEADLINE:?}: neighbour \
             entry {:?} (want {mac}), {neighbour:?}/{connection:?}",
            neighbour_in(&lab.client, vip_addr)
        );
    };
    Followed {
        moved,
        neighbour,
        connection,
    }
}

/// The namespaces, bridge, veths and servers of one run; dropping it removes them all.
struct Lab {
    ha: String,
    hb: String,
    client: String,
    br: String,
    subnet: u8,
    created: Vec<String>,
    servers: Vec<Server>,
}

impl Lab {
    fn new() -> Self {
        let pid = std::process::id();
        let name = |role: &str| format!("dxvip-{pid}-{role}");
        let mut lab = Lab {
            ha: name("hA"),
            hb: name("hB"),
            client: name("client"),
            br: name("br"),
            subnet: u8::try_from(pid % 200).unwrap(),
            created: Vec::new(),
            servers: Vec::new(),
        };
        remove_leftovers("dxvip");
        for ns in lab.namespaces() {
            must(&["netns", "add", &ns]);
            lab.created.push(ns.clone());
            must(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let br = lab.br.clone();
        must(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &br, "link", "set", "br0", "up"]);
        for (index, host, mac) in [
            (1, lab.ha.clone(), MAC_A),
            (2, lab.hb.clone(), MAC_B),
            (3, lab.client.clone(), MAC_CLIENT),
        ] {
            let port = format!("p{index}");
            must(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ]);
            must(&["-n", &br, "link", "set", &port, "master", "br0"]);
            must(&["-n", &br, "link", "set", &port, "up"]);
            must(&["-n", &host, "link", "set", "eth0", "address", mac]);
            let cidr = format!("{}/24", lab.address(index));
            must(&["-n", &host, "addr", "add", &cidr, "dev", "eth0"]);
            must(&["-n", &host, "link", "set", "eth0", "up"]);
        }
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT);
        // Wildcard-bound, so each answers for the VIP exactly while its host holds it (the
        // hosts do not forward), and is listening before any move starts.
        lab.servers.push(Server::start(&lab.ha, any, "hA"));
        lab.servers.push(Server::start(&lab.hb, any, "hB"));
        lab
    }

    fn namespaces(&self) -> Vec<String> {
        vec![
            self.ha.clone(),
            self.hb.clone(),
            self.client.clone(),
            self.br.clone(),
        ]
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.stop();
        }
        // Deleting a namespace deletes the interfaces in it, and a veth goes with either end.
        for ns in self.created.iter().rev() {
            if let Err(error) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: ip netns del {ns}: {error}");
            }
        }
    }
}

/// A TCP server on a thread inside a namespace: answers each connection with its name.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: &str, addr: SocketAddr, name: &'static str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, bound) = std::sync::mpsc::sync_channel(1);
        let netns = netns.to_owned();
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let listener = enter(&netns)
                .and_then(|()| TcpListener::bind(addr))
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener));
            let listener = match listener {
                Ok(listener) => {
                    let _ = ready.send(Ok(()));
                    listener
                }
                Err(error) => {
                    let _ = ready.send(Err(format!("server {name} in {netns} on {addr}: {error}")));
                    return;
                }
            };
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = stream.write_all(name.as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let server = Server {
            stop,
            thread: Some(thread),
        };
        bound
            .recv_timeout(Duration::from_secs(5))
            .expect("server thread started")
            .unwrap();
        server
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Enters network namespace `netns` on the calling thread (only ever a thread of this test's
/// own making, which ends afterwards).
fn enter(netns: &str) -> io::Result<()> {
    let ns = File::open(format!("/run/netns/{netns}"))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// A new TCP connection from namespace `netns` to `addr`: what the server says.
fn fetch(netns: &str, addr: SocketAddr) -> io::Result<String> {
    let netns = netns.to_owned();
    thread::spawn(move || {
        enter(&netns)?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(50))?;
        // Short: a connection made just before the move may never see its server's FIN.
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .join()
    .map_err(|_| io::Error::other("fetch thread panicked"))?
}

/// The MAC the client's neighbour table has for `addr`, if any.
fn neighbour(lab: &Lab, addr: Ipv4Addr) -> Option<String> {
    neighbour_in(&lab.client, addr)
}

fn neighbour_in(netns: &str, addr: Ipv4Addr) -> Option<String> {
    let shown = ip(&[
        "-n",
        netns,
        "neigh",
        "show",
        &addr.to_string(),
        "dev",
        "eth0",
    ])
    .ok()?;
    let mut tokens = shown.split_whitespace();
    tokens.find(|token| *token == "lladdr")?;
    tokens.next().map(str::to_owned)
}

/// Polls `probe` every few milliseconds until it gives a value or `deadline` passes.
fn until<T>(deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}
