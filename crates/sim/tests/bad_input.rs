//! Bad scenario files get an error naming the file, the line and the field.

use std::path::Path;

use duplex_sim::{Scenario, ScenarioError};

const GOOD: &str = r#"
[[hosts]]
name = "a"
[[hosts]]
name = "b"
[[hosts]]
name = "s"
spare = true

[[pairs]]
name = "p"
act = "a"
sby = "b"

[[faults]]
at_ms = 1000
pair = "p"
kind = "watchdog"
"#;

fn error(text: &str) -> (usize, String, String) {
    match Scenario::parse(Path::new("bad.toml"), text) {
        Err(ScenarioError::Invalid {
            line,
            field,
            message,
            path,
            ..
        }) => {
            assert_eq!(path, Path::new("bad.toml"));
            (line, field, message)
        }
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("accepted a bad scenario:\n{text}"),
    }
}

#[test]
fn the_reference_file_is_accepted() {
    let sc = Scenario::parse(Path::new("good.toml"), GOOD).unwrap();
    assert_eq!(sc.name, "good");
    assert_eq!(sc.pairs.len(), 1);
}

#[test]
fn unknown_field_names_line_and_field() {
    let (line, field, msg) = error(&GOOD.replace("spare = true", "spares = true"));
    assert_eq!(line, 8);
    assert_eq!(field, "spares");
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn wrong_type_names_line_and_field() {
    let (line, field, msg) = error(&GOOD.replace("at_ms = 1000", "at_ms = \"soon\""));
    assert_eq!((line, field.as_str()), (16, "at_ms"));
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn unknown_fault_kind_lists_the_kinds() {
    let (line, field, msg) = error(&GOOD.replace("\"watchdog\"", "\"meltdown\""));
    assert_eq!((line, field.as_str()), (18, "kind"));
    assert!(
        msg.contains("meltdown") && msg.contains("os-panic"),
        "{msg}"
    );
}

#[test]
fn pair_on_an_undefined_host_is_named() {
    let (line, field, msg) = error(&GOOD.replace("sby = \"b\"", "sby = \"zz\""));
    assert_eq!((line, field.as_str()), (13, "pairs[0].sby"));
    assert!(msg.contains("\"zz\"") && msg.contains("a, b, s"), "{msg}");
}

#[test]
fn both_units_on_one_host_is_refused() {
    let (line, field, _) = error(&GOOD.replace("sby = \"b\"", "sby = \"a\""));
    assert_eq!((line, field.as_str()), (13, "pairs[0].sby"));
}

#[test]
fn fault_on_an_undefined_pair_is_named() {
    let (line, field, msg) = error(&GOOD.replace("pair = \"p\"", "pair = \"q\""));
    assert_eq!((line, field.as_str()), (17, "faults[0].pair"));
    assert!(msg.contains("\"q\""), "{msg}");
}

#[test]
fn bad_engine_threshold_is_named() {
    let text = format!("[engine]\nthreshold = \"PH2.0\"\n{GOOD}");
    let (line, field, msg) = error(&text);
    assert_eq!((line, field.as_str()), (1, "engine"));
    assert!(msg.contains("PH2.0") && msg.contains("PH3.0"), "{msg}");
}

#[test]
fn zero_capacity_is_named() {
    let (line, field, _) = error(&GOOD.replace("name = \"a\"", "name = \"a\"\ncapacity = 0"));
    assert_eq!((line, field.as_str()), (4, "hosts[0].capacity"));
}

#[test]
fn the_message_shows_file_line_and_text() {
    let err = Scenario::parse(
        Path::new("x/bad.toml"),
        &GOOD.replace("spare = true", "spares = true"),
    )
    .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("x/bad.toml:8:1: spares: unknown field"),
        "{shown}"
    );
    assert!(shown.contains("8 | spares = true"), "{shown}");
}

#[test]
fn a_missing_file_is_named() {
    let err = Scenario::load(Path::new("/nonexistent/s.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/s.toml"), "{err}");
}
