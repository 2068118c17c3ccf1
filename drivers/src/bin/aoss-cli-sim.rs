//! `aoss-cli-sim`: the AOS-S CLI simulator on stdin/stdout (see
//! `drivers::aruba::sim`). Meant as an sshd `ForceCommand`:
//! `aoss-cli-sim --state FILE [--log FILE] [--times FILE] [--stall-after
//! COMMAND]` (or `AOSS_SIM_STATE` / `AOSS_SIM_LOG` / `AOSS_SIM_TIMES` /
//! `AOSS_SIM_STALL_AFTER`). A missing state file is created with a demo
//! switch; `--times` logs when each line arrived; `--stall-after` makes the
//! switch hang after that command, for timeout tests.

use std::process::ExitCode;

fn main() -> ExitCode {
    let paths = match drivers::aruba::sim::paths_from_args(std::env::args().skip(1)) {
        Ok(paths) => paths,
        Err(message) => {
            eprintln!("aoss-cli-sim: {message}");
            return ExitCode::from(2);
        }
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match drivers::aruba::sim::run(&paths, stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aoss-cli-sim: {err}");
            ExitCode::FAILURE
        }
    }
}
