//! How a unit runs: its layers of processes, its watchdog, its timeouts. A unit spec comes from
//! the config (`[units.NAME]`) and is handed to a driver on every host that runs the unit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{FaultKind, Millis};

/// One process of a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Its name within the unit (unique in the unit).
    pub name: String,
    /// Program and arguments. `{unit}`, `{pair}`, `{host}`, `{data_dir}`, `{runtime_dir}` and
    /// every key of the unit's `vars` are replaced before it starts.
    pub command: Vec<String>,
    /// Extra environment variables (templated like `command`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (templated); default: the unit's runtime directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// A unit: a middleware layer and an application layer of processes (DESIGN.md §1 phases map
/// onto them: PH0.5 one process, PH1.0 the application, PH2.0 both layers, PH2.5+ everything
/// torn down and rebuilt from the init store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    /// Started first, stopped last.
    #[serde(default)]
    pub middleware: Vec<ProcessSpec>,
    /// Started after the middleware.
    pub application: Vec<ProcessSpec>,
    /// The unit must pet its watchdog at least this often once it is ready; `None`: no
    /// watchdog (the unit counts as ready once every probe passed, or, without probes, once
    /// its processes ran for `ready_grace_ms`).
    #[serde(default)]
    pub watchdog_ms: Option<Millis>,
    /// Without a watchdog and without probes, how long every process must have run to count
    /// as up.
    #[serde(default = "default_ready_grace")]
    pub ready_grace_ms: Millis,
    /// From SIGTERM to SIGKILL when stopping a process.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: Millis,
    /// Free template variables (e.g. `port = "7501"`), per unit.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Liveness probes the host runs against the unit, for workloads that cannot pet the
    /// watchdog themselves (`[[units.NAME.probes]]`; none by default). See [`ProbeSpec`].
    /// Left out when serialised empty, so a spec without probes reads as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeSpec>,
}

/// A liveness probe: a check the host runs against the unit every `interval_ms`.
///
/// `failures` failed attempts in a row are a fault of kind `fault` (by default `watchdog`: the
/// probe stands in for a watchdog the workload cannot pet). It is reported once, and again only
/// after the unit was (re)started. Without a watchdog, a unit with probes is ready once every
/// probe has passed once after a (re)start. In TOML:
///
/// ```toml
/// [[units.cache.probes]]
/// name = "ping"
/// check = { exec = ["redis-cli", "-p", "{port}", "ping"] }
/// interval_ms = 1000
/// failures = 3
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// Its name within the unit (unique among the unit's probes); reports name it.
    pub name: String,
    /// What one attempt does, and when it passes.
    pub check: ProbeCheck,
    /// From the start of one attempt to the start of the next (an attempt that takes longer
    /// delays the next one). Must be > 0.
    #[serde(default = "default_probe_interval")]
    pub interval_ms: Millis,
    /// How long one attempt may take; a slower one fails (an `exec` probe is killed). Must be
    /// > 0.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: Millis,
    /// How many attempts must fail in a row to count as a fault. Must be > 0.
    #[serde(default = "default_probe_failures")]
    pub failures: u32,
    /// The kind of the fault a failing probe reports.
    #[serde(default = "default_probe_fault")]
    pub fault: FaultKind,
    /// How long to wait after each start or restart of the unit before the first attempt.
    #[serde(default)]
    pub start_after_ms: Millis,
}

/// What a probe checks. Every string is a template, like a process command (`{port}`,
/// `{data_dir}`, … — see [`ProcessSpec::command`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeCheck {
    /// `check = { tcp = "127.0.0.1:{port}" }`: passes when a TCP connection to `HOST:PORT` is
    /// established (it is closed at once).
    Tcp(String),
    /// `check = { http = "http://127.0.0.1:{port}/health" }`, or
    /// `check = { http = { url = "...", expect_status = 204 } }`: an HTTP/1.0 `GET`; passes on
    /// any 2xx or 3xx status (redirects are not followed), or on exactly `expect_status`.
    /// Plain `http://` only.
    Http(HttpCheck),
    /// `check = { exec = ["redis-cli", "-p", "{port}", "ping"] }`: runs the program (in its
    /// own process group, cwd the unit's runtime directory); passes when it exits with status
    /// 0 within the timeout, and is killed with its whole group otherwise.
    Exec(Vec<String>),
    /// `check = { udp = { address = "127.0.0.1:{port}", send = "ping", expect = "pong" } }`:
    /// sends one datagram; passes when a reply comes back (containing `expect`, if given).
    Udp(UdpCheck),
}

/// An HTTP check: a URL, optionally with the one status that passes.
///
/// It reads from a plain string (the URL) or from a table `{ url, expect_status }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    /// `http://HOST[:PORT][/PATH]` (port 80 by default, path `/`).
    pub url: String,
    /// The status that passes; `None`: any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
}

/// The table form of [`HttpCheck`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTable {
    url: String,
    #[serde(default)]
    expect_status: Option<u16>,
}

impl<'de> Deserialize<'de> for HttpCheck {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HttpCheck;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a URL, or a table { url, expect_status }")
            }

            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<HttpCheck, E> {
                Ok(HttpCheck {
                    url: url.to_owned(),
                    expect_status: None,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<HttpCheck, A::Error> {
                let table =
                    HttpTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HttpCheck {
                    url: table.url,
                    expect_status: table.expect_status,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A UDP check: one datagram out, one back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpCheck {
    /// `HOST:PORT` to send to.
    pub address: String,
    /// The datagram sent (UTF-8 text; TOML escapes such as `\n` work).
    pub send: String,
    /// Text the reply must contain; `None`: any reply passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

fn default_probe_interval() -> Millis {
    1_000
}

fn default_probe_timeout() -> Millis {
    1_000
}

fn default_probe_failures() -> u32 {
    3
}

fn default_probe_fault() -> FaultKind {
    FaultKind::Watchdog
}

fn default_ready_grace() -> Millis {
    500
}

fn default_stop_timeout() -> Millis {
    2_000
}

impl UnitSpec {
    /// Every process, middleware first.
    pub fn processes(&self) -> impl Iterator<Item = (Layer, &ProcessSpec)> {
        self.middleware
            .iter()
            .map(|p| (Layer::Middleware, p))
            .chain(self.application.iter().map(|p| (Layer::Application, p)))
    }

    /// Checks what can be checked of the probes without rendering their templates: names
    /// present and unique, periods and counts > 0, a fault kind a probe may report.
    pub fn check_probes(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for probe in &self.probes {
            let name = &probe.name;
            if name.trim().is_empty() {
                return Err("a probe has an empty name".into());
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("two probes are named {name:?}"));
            }
            for (field, value) in [
                ("interval_ms", probe.interval_ms),
                ("timeout_ms", probe.timeout_ms),
                ("failures", u64::from(probe.failures)),
            ] {
                if value == 0 {
                    return Err(format!("probe {name:?}: {field} must be > 0"));
                }
            }
            if probe.fault == FaultKind::HostDown {
                return Err(format!(
                    "probe {name:?}: fault = \"host-down\" is the controller's finding, not a \
                     probe's: pick watchdog, os-panic, middleware, app, process or data-corrupt"
                ));
            }
            if let ProbeCheck::Exec(argv) = &probe.check
                && argv.first().is_none_or(String::is_empty)
            {
                return Err(format!("probe {name:?}: exec needs a program"));
            }
        }
        Ok(())
    }
}

/// The layer a process belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Middleware: restarted from PH2.0 up.
    Middleware,
    /// Application: restarted from PH1.0 up.
    Application,
}

/// Environment variables every unit process gets: how the unit learns where its watchdog is,
/// and its role and epoch (see `docs/unit-protocol.md`).
pub mod env {
    /// Path of the Unix datagram socket to pet (send any datagram, e.g. `pet`).
    pub const WATCHDOG: &str = "DUPLEX_WATCHDOG";
    /// The watchdog period in milliseconds.
    pub const WATCHDOG_MS: &str = "DUPLEX_WATCHDOG_MS";
    /// The role at start: `act`, `sby` or `none`.
    pub const ROLE: &str = "DUPLEX_ROLE";
    /// The epoch at start.
    pub const EPOCH: &str = "DUPLEX_EPOCH";
    /// Path of the role file, rewritten atomically on every change (`{"role":"act","epoch":3}`);
    /// the application processes also get SIGUSR1 after each change.
    pub const ROLE_FILE: &str = "DUPLEX_ROLE_FILE";
    /// The unit's data directory (restored from the init store before start).
    pub const DATA_DIR: &str = "DUPLEX_DATA_DIR";
    /// The unit's name.
    pub const UNIT: &str = "DUPLEX_UNIT";
    /// The pair's name.
    pub const PAIR: &str = "DUPLEX_PAIR";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        units: BTreeMap<String, UnitSpec>,
    }

    fn unit(toml_text: &str) -> Result<UnitSpec, String> {
        toml::from_str::<Config>(toml_text)
            .map(|mut c| c.units.remove("x").expect("unit x"))
            .map_err(|e| e.to_string())
    }

    const PROBES: &str = r#"
[units.x]
application = [{ name = "redis", command = ["redis-server", "--port", "{port}"] }]

[[units.x.probes]]
name = "ping"
check = { exec = ["redis-cli", "-p", "{port}", "ping"] }
timeout_ms = 500

[[units.x.probes]]
name = "port"
check = { tcp = "127.0.0.1:{port}" }
interval_ms = 200
failures = 5
fault = "os-panic"
start_after_ms = 2000

[[units.x.probes]]
name = "health"
check = { http = "http://127.0.0.1:{port}/health" }

[[units.x.probes]]
name = "strict"
check = { http = { url = "http://127.0.0.1:{port}/", expect_status = 204 } }

[[units.x.probes]]
name = "echo"
check = { udp = { address = "127.0.0.1:{port}", send = "ping\n", expect = "pong" } }
"#;

    #[test]
    fn units_parse_with_probes_and_their_defaults() {
        let spec = unit(PROBES).unwrap();
        let probes = &spec.probes;
        assert_eq!(probes.len(), 5);
        assert_eq!(
            probes[0],
            ProbeSpec {
                name: "ping".into(),
                check: ProbeCheck::Exec(
                    ["redis-cli", "-p", "{port}", "ping"]
                        .map(String::from)
                        .to_vec()
                ),
                interval_ms: 1_000,
                timeout_ms: 500,
                failures: 3,
                fault: FaultKind::Watchdog,
                start_after_ms: 0,
            }
        );
        assert_eq!(probes[1].check, ProbeCheck::Tcp("127.0.0.1:{port}".into()));
        assert_eq!(
            (
                probes[1].interval_ms,
                probes[1].failures,
                probes[1].fault,
                probes[1].start_after_ms
            ),
            (200, 5, FaultKind::OsPanic, 2_000)
        );
        assert_eq!(
            probes[2].check,
            ProbeCheck::Http(HttpCheck {
                url: "http://127.0.0.1:{port}/health".into(),
                expect_status: None
            })
        );
        assert_eq!(
            probes[3].check,
            ProbeCheck::Http(HttpCheck {
                url: "http://127.0.0.1:{port}/".into(),
                expect_status: Some(204)
            })
        );
        assert_eq!(
            probes[4].check,
            ProbeCheck::Udp(UdpCheck {
                address: "127.0.0.1:{port}".into(),
                send: "ping\n".into(),
                expect: Some("pong".into())
            })
        );
        spec.check_probes().unwrap();

        // What the controller sends to agents survives the trip.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<UnitSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn units_without_probes_still_parse() {
        let spec =
            unit("[units.x]\napplication = [{ name = \"a\", command = [\"a\"] }]\n").unwrap();
        assert!(spec.probes.is_empty());
        let json = r#"{"application":[{"name":"a","command":["a"]}]}"#;
        let parsed = serde_json::from_str::<UnitSpec>(json).unwrap();
        assert!(parsed.probes.is_empty());
        let written = serde_json::to_string(&parsed).unwrap();
        assert!(!written.contains("probes"), "{written}");
    }

    #[test]
    fn unknown_probe_fields_and_checks_are_refused_by_name() {
        let base = "[units.x]\napplication = [{ name = \"a\", command = [\"a\"] }]\n\
                    [[units.x.probes]]\nname = \"p\"\n";
        let cases = [
            ("check = { tcp = \"h:1\" }\nintervl_ms = 5\n", "intervl_ms"),
            ("check = { smtp = \"h:25\" }\n", "smtp"),
            (
                "check = { http = { url = \"http://h/\", status = 200 } }\n",
                "status",
            ),
            (
                "check = { udp = { address = \"h:1\", send = \"x\", reply = \"y\" } }\n",
                "reply",
            ),
            ("check = { tcp = \"h:1\" }\nfault = \"hang\"\n", "hang"),
            ("interval_ms = 5\n", "check"),
        ];
        for (probe, want) in cases {
            let err = unit(&format!("{base}{probe}")).unwrap_err();
            assert!(
                err.contains(want),
                "{probe:?}: {err:?} should name {want:?}"
            );
        }
    }

    #[test]
    fn probe_checks_name_what_is_wrong() {
        let mut spec = unit(PROBES).unwrap();
        let ok = spec.clone();
        spec.probes[1].name = "ping".into();
        assert!(spec.check_probes().unwrap_err().contains("two probes"));
        for (edit, want) in [
            (
                (|p: &mut ProbeSpec| p.interval_ms = 0) as fn(&mut ProbeSpec),
                "interval_ms",
            ),
            (|p| p.timeout_ms = 0, "timeout_ms"),
            (|p| p.failures = 0, "failures"),
            (|p| p.fault = FaultKind::HostDown, "host-down"),
            (
                |p| p.check = ProbeCheck::Exec(vec![]),
                "exec needs a program",
            ),
            (|p| p.name = " ".into(), "empty name"),
        ] {
            let mut spec = ok.clone();
            edit(&mut spec.probes[0]);
            let err = spec.check_probes().unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
