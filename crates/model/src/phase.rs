use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A rung of the restart escalation ladder, from the smallest re-initialisation to auto-heal.
///
/// The order of the variants is the order of the ladder: `Ord` compares how wide a restart is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// PH0.5: reset the one process that failed.
    #[serde(rename = "PH0.5")]
    Ph05,
    /// PH1.0: restart the application (all its processes).
    #[serde(rename = "PH1.0")]
    Ph10,
    /// PH2.0: restart the middleware and the application.
    #[serde(rename = "PH2.0")]
    Ph20,
    /// PH2.5: reload everything from the current files and reboot the OS, same host.
    #[serde(rename = "PH2.5")]
    Ph25,
    /// PH3.0: as PH2.5 but from the LAF backup.
    #[serde(rename = "PH3.0")]
    Ph30,
    /// PH3.5: as PH2.5 but from the REF initial data set (optional rung).
    #[serde(rename = "PH3.5")]
    Ph35,
    /// Delete the unit and recreate it on another host from its init info.
    #[serde(rename = "auto-heal")]
    AutoHeal,
}

impl Phase {
    /// Every phase, narrowest first.
    pub const ALL: [Phase; 7] = [
        Phase::Ph05,
        Phase::Ph10,
        Phase::Ph20,
        Phase::Ph25,
        Phase::Ph30,
        Phase::Ph35,
        Phase::AutoHeal,
    ];

    /// The name used in configs, logs and reports (`PH2.5`, `auto-heal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ph05 => "PH0.5",
            Phase::Ph10 => "PH1.0",
            Phase::Ph20 => "PH2.0",
            Phase::Ph25 => "PH2.5",
            Phase::Ph30 => "PH3.0",
            Phase::Ph35 => "PH3.5",
            Phase::AutoHeal => "auto-heal",
        }
    }

    /// The next wider rung. `with_ph35` says whether the optional REF rung is on the ladder.
    /// Auto-heal is the top: it has no next rung.
    pub fn next(self, with_ph35: bool) -> Option<Phase> {
        match self {
            Phase::Ph05 => Some(Phase::Ph10),
            Phase::Ph10 => Some(Phase::Ph20),
            Phase::Ph20 => Some(Phase::Ph25),
            Phase::Ph25 => Some(Phase::Ph30),
            Phase::Ph30 if with_ph35 => Some(Phase::Ph35),
            Phase::Ph30 | Phase::Ph35 => Some(Phase::AutoHeal),
            Phase::AutoHeal => None,
        }
    }

    /// Whether this rung restarts the OS (PH2.5 and wider): the seed's S5 question.
    pub fn restarts_os(self) -> bool {
        self >= Phase::Ph25
    }

    /// The init-info generation an OS-level rung loads; `None` below PH2.5 (nothing is reloaded).
    pub fn generation(self) -> Option<Generation> {
        match self {
            Phase::Ph05 | Phase::Ph10 | Phase::Ph20 => None,
            Phase::Ph25 | Phase::AutoHeal => Some(Generation::Current),
            Phase::Ph30 => Some(Generation::Laf),
            Phase::Ph35 => Some(Generation::Ref),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase name that is not on the ladder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown phase {given:?}: expected one of PH0.5, PH1.0, PH2.0, PH2.5, PH3.0, PH3.5, auto-heal"
)]
pub struct PhaseParseError {
    /// What was given.
    pub given: String,
}

impl FromStr for Phase {
    type Err = PhaseParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| PhaseParseError {
                given: s.to_owned(),
            })
    }
}

/// A generation of a unit's init info on the init store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// The current files, kept in sync from the ACT while the pair runs duplex.
    Current,
    /// The last periodic backup ("LAF").
    Laf,
    /// The initial data set ("REF").
    Ref,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Current => "current",
            Generation::Laf => "LAF",
            Generation::Ref => "REF",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_with_ph35_visits_every_rung_in_order() {
        let mut rung = Phase::Ph05;
        let mut seen = vec![rung];
        while let Some(next) = rung.next(true) {
            assert!(next > rung, "{next} must be wider than {rung}");
            seen.push(next);
            rung = next;
        }
        assert_eq!(seen, Phase::ALL);
    }

    #[test]
    fn ladder_without_ph35_skips_ref_rung() {
        assert_eq!(Phase::Ph30.next(false), Some(Phase::AutoHeal));
        assert_eq!(Phase::Ph35.next(false), Some(Phase::AutoHeal));
    }

    #[test]
    fn phase_names_round_trip_through_text_and_serde() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        let err = "PH9".parse::<Phase>().unwrap_err();
        assert!(err.to_string().contains("PH9"));
    }

    #[test]
    fn only_os_rungs_load_a_generation() {
        assert_eq!(Phase::Ph20.generation(), None);
        assert_eq!(Phase::Ph25.generation(), Some(Generation::Current));
        assert_eq!(Phase::Ph30.generation(), Some(Generation::Laf));
        assert_eq!(Phase::Ph35.generation(), Some(Generation::Ref));
        assert!(Phase::Ph25.restarts_os() && !Phase::Ph20.restarts_os());
    }
}
