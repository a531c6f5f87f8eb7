//! Role-change hooks in the config: a hook whose program is missing or not executable is
//! refused at load, naming the file, the line, `units.NAME.hooks` and the program.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use duplex_controller::{Config, ConfigError};

fn config(hooks: &str, local: bool) -> String {
    format!(
        r#"[units.kv]
application = [{{ name = "kv", command = ["sleep", "100"] }}]
vars = {{ script = "/x" }}
{hooks}
[[hosts]]
name = "h1"
local = {local}
[[hosts]]
name = "h2"
local = {local}

[[pairs]]
name = "kv"
unit = "kv"
act = "h1"
sby = "h2"
"#
    )
}

fn hook(program: &Path) -> String {
    format!(
        "[[units.kv.hooks]]\nname = \"notify\"\ncommand = [\"{}\", \"{{unit}}\"]\non = [\"act\"]\n",
        program.display()
    )
}

fn load(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let path = dir.join("duplex.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

fn script(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("notify.sh");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn a_hook_program_that_cannot_run_is_refused_at_load_with_file_line_field_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let notify = script(dir.path(), 0o644);
    let err = load(dir.path(), &config(&hook(&notify), true)).unwrap_err();
    let ConfigError::Invalid {
        path,
        line,
        field,
        message,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(path, &dir.path().join("duplex.toml"));
    assert_eq!(field, "units.kv.hooks");
    assert_eq!(
        message,
        &format!(
            "hook notify: {} is not executable (mode 644)",
            notify.display()
        )
    );
    // At the unit's table, `[units.kv]` on line 1.
    assert_eq!(*line, 1);
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:1:", path.display())),
        "{shown}"
    );
    assert!(shown.contains("units.kv.hooks"), "{shown}");

    // Missing.
    let missing = dir.path().join("nope.sh");
    let err = load(dir.path(), &config(&hook(&missing), true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("units.kv.hooks")
            && err.contains(&format!("hook notify: {} not found", missing.display())),
        "{err}"
    );

    // Executable: accepted, and the unit carries its hook.
    std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = load(dir.path(), &config(&hook(&notify), true)).unwrap();
    let hooks = &cfg.pairs[0].unit.hooks;
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].command[0], notify.display().to_string());
    assert_eq!(hooks[0].timeout_ms, 10_000);
}

#[test]
fn hook_programs_are_not_looked_for_when_templated_or_when_every_agent_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let notify = script(dir.path(), 0o644);
    // Every host is remote: the program lives on the agents' machines, not here.
    load(dir.path(), &config(&hook(&notify), false)).unwrap();
    // A templated program is only known on the host.
    load(dir.path(), &config(&hook(Path::new("{script}")), true)).unwrap();
    // A program on PATH.
    load(dir.path(), &config(&hook(Path::new("sh")), true)).unwrap();
    let err = load(
        dir.path(),
        &config(&hook(Path::new("no-such-duplex-hook")), true),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("hook notify: no-such-duplex-hook not found on PATH"),
        "{err}"
    );
}

#[test]
fn hook_specs_are_checked_whatever_the_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let twice = format!("{}{}", hook(Path::new("sh")), hook(Path::new("sh")));
    let err = load(dir.path(), &config(&twice, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("units.kv.hooks") && err.contains("two hooks are named \"notify\""),
        "{err}"
    );
    let unknown = "[[units.kv.hooks]]\nname = \"n\"\ncommand = [\"sh\"]\ntimeout = 5\n";
    let err = load(dir.path(), &config(unknown, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timeout"), "{err}");
}
