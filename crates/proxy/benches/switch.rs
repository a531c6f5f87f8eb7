//! `proxy/switch`: how soon a client is served by the new ACT after `set_target`.
//!
//! Two fake units on loopback, `a` and `b`, each a TCP server that sends one byte (its name) on
//! accept and a UDP server that answers every datagram with its name. One `ServiceProxy`
//! (TCP + UDP on one port) in front of them. One operation each, timed from its first step to
//! the first byte received:
//!
//! - `tcp_direct`: connect to a unit and read its first byte: the baseline, no proxy.
//! - `tcp_proxied`: the same through the proxy, target unchanged: the proxy's own cost.
//! - `tcp_switch`: `set_target` to the other unit (next epoch), connect to the proxy, read the
//!   first byte, which must be the new unit's.
//! - `udp_direct`, `udp_proxied`, `udp_switch`: one datagram and its reply, likewise. A switch
//!   closes the client's session and the next datagram opens one towards the new unit.
//!
//! Criterion reports each operation. The ratios are measured separately, after it, in one
//! interleaved pass (direct, proxied, switch, direct, …; `PAIRED` rounds per transport) so
//! that load from other processes hits all three alike; medians and p90 go to stderr with the
//! ratios proxied/direct and switch/direct.
//!
//! Clients close with RST so that tens of thousands of connections leave no TIME_WAIT behind.
//!
//! Run: `cargo bench -p duplex-proxy --bench switch`. `cargo test -p duplex-proxy --benches`
//! runs each benchmark once as a smoke test (and the interleaved pass).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::Criterion;
use duplex_model::Epoch;
use duplex_proxy::{Protocols, ServiceProxy, TargetUpdate};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// Rounds of the interleaved pass, per transport.
const PAIRED: usize = 3_000;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A fake unit: TCP and UDP on one port, answering with `name`.
struct Unit {
    addr: SocketAddr,
    name: u8,
}

/// Starts a unit's servers on `tasks` (aborted when the set is dropped).
async fn unit(name: u8, tasks: &mut JoinSet<()>) -> Unit {
    let listener = TcpListener::bind(loopback(0)).await.expect("bind unit tcp");
    let addr = listener.local_addr().expect("unit address");
    let udp = UdpSocket::bind(addr).await.expect("bind unit udp");
    tasks.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            // One byte, then keep the connection until the client goes away.
            tokio::spawn(async move {
                let _ = stream.try_write(&[name]);
                let mut stream = stream;
                let mut sink = [0u8; 64];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    tasks.spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            if let Ok((_, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&[name], from).await;
            }
        }
    });
    Unit { addr, name }
}

/// Connects to `addr` and returns the first byte it sends; the connection is reset on return.
async fn tcp_first_byte(addr: SocketAddr) -> u8 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.expect("first byte");
    let _ = stream.set_zero_linger();
    byte[0]
}

/// Sends one datagram from `client` to `addr` and returns the first byte of the reply.
async fn udp_first_reply(client: &UdpSocket, addr: SocketAddr) -> u8 {
    client.send_to(b"?", addr).await.expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).await.expect("reply");
    assert!(n > 0, "empty reply");
    buf[0]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

#[derive(Clone, Copy)]
enum Op {
    Direct,
    Proxied,
    Switch,
}

/// The units, the proxy in front of them, and which unit is ACT.
struct Setup {
    units: [Unit; 2],
    proxy: ServiceProxy,
    client: UdpSocket,
    /// Index of the current ACT in `units`.
    act: usize,
    epoch: Epoch,
    _tasks: JoinSet<()>,
}

impl Setup {
    async fn new() -> Setup {
        let mut tasks = JoinSet::new();
        let a = unit(b'a', &mut tasks).await;
        let b = unit(b'b', &mut tasks).await;
        let proxy = ServiceProxy::bind(loopback(0), Protocols::BOTH)
            .await
            .expect("bind proxy");
        let client = UdpSocket::bind(loopback(0)).await.expect("bind client");
        let epoch = Epoch(1);
        proxy.set_target(Some((a.addr, epoch)));
        Setup {
            units: [a, b],
            proxy,
            client,
            act: 0,
            epoch,
            _tasks: tasks,
        }
    }

    /// Performs one operation, checks who answered, returns how long it took.
    async fn run(&mut self, transport: Transport, op: Op) -> Duration {
        let start = Instant::now();
        let (addr, expected) = match op {
            Op::Direct => {
                let unit = &self.units[self.act];
                (unit.addr, unit.name)
            }
            Op::Proxied => (self.proxy.local_addr(), self.units[self.act].name),
            Op::Switch => {
                self.act = 1 - self.act;
                self.epoch = self.epoch.next();
                let unit = &self.units[self.act];
                let applied = self.proxy.set_target(Some((unit.addr, self.epoch)));
                assert_eq!(applied, TargetUpdate::Applied);
                (self.proxy.local_addr(), unit.name)
            }
        };
        let got = match transport {
            Transport::Tcp => tcp_first_byte(addr).await,
            Transport::Udp => udp_first_reply(&self.client, addr).await,
        };
        let took = start.elapsed();
        assert_eq!(got, expected, "answered by the wrong unit");
        took
    }
}

fn criterion_pass(c: &mut Criterion, rt: &Runtime, setup: &mut Setup) {
    let mut group = c.benchmark_group("proxy/switch");
    for (transport, tname) in [(Transport::Tcp, "tcp"), (Transport::Udp, "udp")] {
        for (op, oname) in [
            (Op::Direct, "direct"),
            (Op::Proxied, "proxied"),
            (Op::Switch, "switch"),
        ] {
            group.bench_function(format!("{tname}_{oname}"), |bencher| {
                bencher.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += setup.run(transport, op).await;
                        }
                        total
                    })
                });
            });
        }
    }
    group.finish();
}

/// Median and 90th percentile.
fn quantiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| {
        // Index of the q-quantile: a small count, no truncation of interest.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default()
    };
    (at(0.5), at(0.9))
}

fn paired_pass(rt: &Runtime, setup: &mut Setup) {
    for (transport, tname) in [(Transport::Tcp, "tcp"), (Transport::Udp, "udp")] {
        let mut direct = Vec::with_capacity(PAIRED);
        let mut proxied = Vec::with_capacity(PAIRED);
        let mut switched = Vec::with_capacity(PAIRED);
        rt.block_on(async {
            for _ in 0..PAIRED {
                direct.push(setup.run(transport, Op::Direct).await);
                proxied.push(setup.run(transport, Op::Proxied).await);
                switched.push(setup.run(transport, Op::Switch).await);
            }
        });
        let (d50, d90) = quantiles(&mut direct);
        let (p50, p90) = quantiles(&mut proxied);
        let (s50, s90) = quantiles(&mut switched);
        let ratio = |x: Duration| x.as_secs_f64() / d50.as_secs_f64().max(f64::MIN_POSITIVE);
        eprintln!(
            "proxy/switch/{tname} ({PAIRED} interleaved rounds): direct median {d50:?} (p90 \
             {d90:?}); proxied median {p50:?} (p90 {p90:?}), {:.2}x direct; set_target to \
             first byte from the new ACT median {s50:?} (p90 {s90:?}), {:.2}x direct",
            ratio(p50),
            ratio(s50),
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut setup = rt.block_on(Setup::new());
    criterion_pass(&mut c, &rt, &mut setup);
    c.final_summary();
    paired_pass(&rt, &mut setup);

    let stats = setup.proxy.stats();
    eprintln!(
        "proxy/switch: {} target changes, {} tcp connections ({} failed upstream, {} closed by \
         switch), {} udp datagrams in, {} out, {} dropped",
        stats.target_changes,
        stats.tcp_accepted,
        stats.tcp_connect_failed,
        stats.tcp_closed_by_switch,
        stats.udp_datagrams_in,
        stats.udp_datagrams_out,
        stats.udp_dropped_no_target + stats.udp_dropped_error,
    );
    rt.block_on(setup.proxy.shutdown());
}
