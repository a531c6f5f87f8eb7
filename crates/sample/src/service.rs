//! The service's state and the line protocol, without I/O other than the data file.
//!
//! | request          | reply                                                  |
//! |------------------|--------------------------------------------------------|
//! | `PING`           | `PONG`                                                 |
//! | `ROLE`           | role and epoch, e.g. `act 3`                           |
//! | `GET key`        | the value, or `NIL`                                    |
//! | `SET key value`  | `OK` (ACT only, else `ERR not-act`); value = rest of line |
//! | `INCR key`       | the new integer (ACT only; a missing key counts as 0)  |
//!
//! Anything else gets `ERR ...`. Command words are case-insensitive.

use duplex_model::{Epoch, Role};

use crate::kv::Kv;

/// Role, epoch and data of the running service.
#[derive(Debug)]
pub struct Service {
    role: Role,
    epoch: Epoch,
    kv: Kv,
}

/// What became of a role update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Its epoch is older than one already seen: ignored.
    Stale {
        /// The newest epoch seen.
        seen: Epoch,
    },
    /// Same role, same epoch: nothing to do.
    Same,
    /// Taken; the data was reloaded from disk.
    Taken,
}

/// The word for a role in replies and in the role file.
pub fn role_word(role: Role) -> &'static str {
    match role {
        Role::Act => "act",
        Role::Sby => "sby",
        Role::None => "none",
    }
}

/// A role word (`act`, `sby`, `none`).
pub fn parse_role(word: &str) -> Option<Role> {
    match word {
        "act" => Some(Role::Act),
        "sby" => Some(Role::Sby),
        "none" => Some(Role::None),
        _ => None,
    }
}

impl Service {
    /// A service with this role, epoch and data.
    pub fn new(role: Role, epoch: Epoch, kv: Kv) -> Self {
        Self { role, epoch, kv }
    }

    /// The role and epoch.
    pub fn role(&self) -> (Role, Epoch) {
        (self.role, self.epoch)
    }

    /// Takes a new role unless its epoch is older than the newest seen (a stale grant from a
    /// deposed controller must never make this unit ACT again). A change reloads the data: the
    /// host agent may have refreshed it from the init store while this unit stood by.
    pub fn update_role(&mut self, role: Role, epoch: Epoch) -> Update {
        if epoch < self.epoch {
            return Update::Stale { seen: self.epoch };
        }
        if (role, epoch) == (self.role, self.epoch) {
            return Update::Same;
        }
        self.role = role;
        self.epoch = epoch;
        if let Err(e) = self.kv.reload() {
            eprintln!("duplex-sample: keeping the data in memory: {e}");
        }
        Update::Taken
    }

    /// Answers one request line (without its newline).
    pub fn execute(&mut self, line: &str) -> String {
        let (command, rest) = word(line);
        let (key, value) = word(rest);
        let value = value.trim_end();
        match command.to_ascii_uppercase().as_str() {
            "" => "ERR empty request".to_owned(),
            "PING" => "PONG".to_owned(),
            "ROLE" => format!("{} {}", role_word(self.role), self.epoch),
            "GET" if !key.is_empty() => self.kv.get(key).unwrap_or("NIL").to_owned(),
            "GET" => "ERR usage: GET key".to_owned(),
            "SET" if key.is_empty() || value.is_empty() => "ERR usage: SET key value".to_owned(),
            "SET" if self.role != Role::Act => "ERR not-act".to_owned(),
            "SET" => match self.kv.set(key, value.to_owned()) {
                Ok(()) => "OK".to_owned(),
                Err(e) => format!("ERR io: {e}"),
            },
            "INCR" if key.is_empty() => "ERR usage: INCR key".to_owned(),
            "INCR" if self.role != Role::Act => "ERR not-act".to_owned(),
            "INCR" => self.incr(key),
            other => format!("ERR unknown command {other:?}: use PING, ROLE, GET, SET, INCR"),
        }
    }

    fn incr(&mut self, key: &str) -> String {
        let current = match self.kv.get(key) {
            None => 0,
            Some(text) => match text.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return format!("ERR not-an-integer: {key} is {text:?}"),
            },
        };
        let Some(next) = current.checked_add(1) else {
            return "ERR overflow".to_owned();
        };
        match self.kv.set(key, next.to_string()) {
            Ok(()) => next.to_string(),
            Err(e) => format!("ERR io: {e}"),
        }
    }
}

/// The first word of `text` and the rest after the whitespace that follows it.
fn word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim_start()),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(role: Role, epoch: u64) -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(dir.path()).unwrap();
        (dir, Service::new(role, Epoch(epoch), kv))
    }

    #[test]
    fn requests_get_their_replies() {
        let (_dir, mut s) = service(Role::Act, 3);
        let cases = [
            ("PING", "PONG"),
            ("ping", "PONG"),
            ("ROLE", "act 3"),
            ("GET k", "NIL"),
            ("SET k  two  words ", "OK"),
            ("GET k", "two  words"),
            ("INCR n", "1"),
            ("incr n", "2"),
            ("INCR k", "ERR not-an-integer: k is \"two  words\""),
            ("SET k", "ERR usage: SET key value"),
            ("GET", "ERR usage: GET key"),
            ("", "ERR empty request"),
        ];
        for (request, reply) in cases {
            assert_eq!(s.execute(request), reply, "{request:?}");
        }
        assert!(
            s.execute("FLY away")
                .starts_with("ERR unknown command \"FLY\"")
        );
        s.execute("SET big 9223372036854775807");
        assert_eq!(s.execute("INCR big"), "ERR overflow");
    }

    #[test]
    fn only_the_act_writes() {
        for role in [Role::Sby, Role::None] {
            let (_dir, mut s) = service(role, 1);
            assert_eq!(s.execute("SET k v"), "ERR not-act");
            assert_eq!(s.execute("INCR k"), "ERR not-act");
            assert_eq!(s.execute("GET k"), "NIL");
        }
    }

    #[test]
    fn epochs_never_go_back() {
        let (_dir, mut s) = service(Role::Sby, 4);
        assert_eq!(
            s.update_role(Role::Act, Epoch(3)),
            Update::Stale { seen: Epoch(4) }
        );
        assert_eq!(s.role(), (Role::Sby, Epoch(4)));
        assert_eq!(s.update_role(Role::Sby, Epoch(4)), Update::Same);
        assert_eq!(
            s.update_role(Role::Act, Epoch(4)),
            Update::Taken,
            "same epoch, new role"
        );
        assert_eq!(s.update_role(Role::Sby, Epoch(6)), Update::Taken);
        assert_eq!(s.execute("ROLE"), "sby 6");
    }

    #[test]
    fn role_words_round_trip() {
        for role in [Role::Act, Role::Sby, Role::None] {
            assert_eq!(parse_role(role_word(role)), Some(role));
        }
        assert_eq!(parse_role("ACT"), None);
    }
}
