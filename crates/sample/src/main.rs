//! The `duplex-sample` binary: see the library for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    duplex_sample::main_with_args(std::env::args_os().skip(1))
}
