//! Issue #4: a real server nobody here wrote (Debian's redis-server) behind a pair, a real
//! client through the pair's service address, and a watchdog fault on the ACT (its watchdog
//! probe starves when the ACT is frozen), under each policy. The test prints the outage window
//! (last success before, first success after) and the requests lost, and writes them to
//! `target/test-artifacts/redis-outage.json`; BENCHMARKS.md quotes them.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::Up;

fn redis_config(policy: &str, listen: u16, service: u16, ports: [u16; 3]) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/redis.toml"
    ))
    .unwrap();
    text.replace("127.0.0.1:7410", &format!("127.0.0.1:{listen}"))
        .replace("state_dir = \"../.duplex/redis\"", "state_dir = \"state\"")
        .replace(
            "policy = \"duplex-restart\"",
            &format!("policy = \"{policy}\""),
        )
        .replace("sync_ms = 500", "sync_ms = 200")
        .replace("\"6401\"", &format!("\"{}\"", ports[0]))
        .replace("\"6402\"", &format!("\"{}\"", ports[1]))
        .replace("\"6403\"", &format!("\"{}\"", ports[2]))
        .replace("127.0.0.1:6400", &format!("127.0.0.1:{service}"))
        .replace("token = \"demo-token\"", "token = \"test-token\"")
}

/// One INCR over RESP on a fresh connection, bounded.
fn incr(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.write_all(b"*2\r\n$4\r\nINCR\r\n$5\r\nclock\r\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.starts_with(':'))
    };
    attempt().unwrap_or(false)
}

fn have(bin: &str) -> bool {
    std::path::Path::new(bin).exists()
}

#[derive(Debug, serde::Serialize)]
struct Outage {
    policy: String,
    outage_ms: u128,
    requests_lost: usize,
    requests_ok: usize,
    recovered_epoch: u64,
}

fn measure(policy: &str) -> Outage {
    let service = support::free_port();
    let up = Up::start_config(|listen, ports| redis_config(policy, listen, service, ports));
    up.wait_duplex(1);
    // A stock client through the service address first.
    let bench = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &service.to_string(),
            "-q",
            "-t",
            "set,get",
            "-n",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "redis-benchmark: {}",
        String::from_utf8_lossy(&bench.stderr)
    );

    let log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = incr(service);
                log.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    up.wait_for("the client succeeding", || {
        log.lock().unwrap().iter().any(|(_, ok)| *ok).then_some(())
    });
    up.cli(&["faulty", "host-a", "on"]);
    let fault_at = Instant::now();
    up.cli(&["fault", "redis", "--unit", "act", "--kind", "watchdog"]);
    let status = up.wait_duplex(2);
    // Recovered: a few requests in a row succeed again after the fault.
    up.wait_for("the client succeeding after the recovery", || {
        let log = log.lock().unwrap();
        let tail: Vec<bool> = log.iter().rev().take(5).map(|(_, ok)| *ok).collect();
        let after = log
            .iter()
            .any(|(t, ok)| *ok && *t > fault_at + Duration::from_millis(100));
        (after && tail.len() == 5 && tail.iter().all(|ok| *ok)).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    up.stop();

    let log = log.lock().unwrap();
    let last_ok_before = log
        .iter()
        .filter(|(t, ok)| *ok && *t <= fault_at)
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    let first_fail = log
        .iter()
        .find(|(t, ok)| !*ok && *t > last_ok_before)
        .map(|(t, _)| *t)
        .unwrap_or(last_ok_before);
    let first_ok_after = log
        .iter()
        .find(|(t, ok)| *ok && *t > first_fail)
        .map(|(t, _)| *t)
        .unwrap();
    let lost = log
        .iter()
        .filter(|(t, ok)| !*ok && *t > last_ok_before && *t < first_ok_after)
        .count();
    Outage {
        policy: policy.to_owned(),
        outage_ms: first_ok_after.duration_since(last_ok_before).as_millis(),
        requests_lost: lost,
        requests_ok: log.iter().filter(|(_, ok)| *ok).count(),
        recovered_epoch: status["pairs"][0]["epoch"].as_u64().unwrap(),
    }
}

#[test]
fn redis_behind_a_pair_recovers_from_a_watchdog_fault_under_every_policy() {
    let missing: Vec<&str> = [
        "/usr/bin/redis-server",
        "/usr/bin/redis-cli",
        "/usr/bin/redis-benchmark",
    ]
    .into_iter()
    .filter(|b| !have(b))
    .collect();
    if !missing.is_empty() {
        let msg = format!(
            "redis-server/redis-tools not installed ({missing:?}): apt-get install redis-server redis-tools, or run ./scripts/test"
        );
        assert!(
            std::env::var("DUPLEX_SYSTEM_TESTS").as_deref() != Ok("1"),
            "{msg}"
        );
        println!("skipped: {msg}");
        return;
    }
    let results: Vec<Outage> = ["escalation", "duplex-restart", "hot-takeover"]
        .into_iter()
        .map(measure)
        .collect();
    for r in &results {
        println!(
            "{:<15} outage {:>6} ms, {:>3} requests lost ({} ok), epoch {}",
            r.policy, r.outage_ms, r.requests_lost, r.requests_ok, r.recovered_epoch
        );
        assert!(r.recovered_epoch >= 2, "{r:?}");
    }
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(
            |_| std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")),
            std::path::PathBuf::from,
        )
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("redis-outage.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
}

/// A second stock server: Debian's nginx (an HTTP watchdog probe stands in for the watchdog),
/// serving the pair's REF data set through the service address across a duplex restart.
#[test]
fn nginx_behind_a_pair_serves_through_its_service_address_across_a_duplex_restart() {
    if !have("/usr/sbin/nginx") {
        let msg = "nginx not installed: apt-get install nginx, or run ./scripts/test";
        assert!(
            std::env::var("DUPLEX_SYSTEM_TESTS").as_deref() != Ok("1"),
            "{msg}"
        );
        println!("skipped: {msg}");
        return;
    }
    let service = support::free_port();
    let site = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/nginx-site");
    let up = Up::start_config(|listen, ports| {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/nginx.toml"
        ))
        .unwrap();
        text.replace("127.0.0.1:7420", &format!("127.0.0.1:{listen}"))
            .replace("state_dir = \"../.duplex/nginx\"", "state_dir = \"state\"")
            .replace("\"8081\"", &format!("\"{}\"", ports[0]))
            .replace("\"8082\"", &format!("\"{}\"", ports[1]))
            .replace("\"8083\"", &format!("\"{}\"", ports[2]))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{service}"))
            .replace(
                "ref_data = \"nginx-site\"",
                &format!("ref_data = \"{site}\""),
            )
            .replace("token = \"demo-token\"", "token = \"test-token\"")
    });
    let get = |path: &str| -> Option<String> {
        let mut s = TcpStream::connect_timeout(
            &([127, 0, 0, 1], service).into(),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body).ok()?;
        body.starts_with("HTTP/1.1 200").then_some(body)
    };
    up.wait_duplex(1);
    let page = up.wait_for("nginx serving the site through the service address", || {
        get("/")
    });
    assert!(page.contains("served by the ACT of pair web"), "{page}");
    up.cli(&["faulty", "host-a", "on"]);
    up.cli(&[
        "fault", "web", "--unit", "act", "--kind", "watchdog", "--wait", "60",
    ]);
    let status = up.wait_duplex(3);
    let events = up.events();
    assert!(
        events.contains("probe health"),
        "the watchdog probe detected it: {events}"
    );
    assert!(events.contains("duplex restart (PH2.5)"), "{events}");
    let page = up.wait_for("nginx serving again through the service address", || {
        get("/")
    });
    assert!(page.contains("served by the ACT of pair web"), "{page}");
    assert!(
        status["pairs"][0]["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["host"] == "spare-1")
    );
    up.stop();
}
