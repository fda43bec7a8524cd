//! What the command-line tests share: the binary, run in a folder of the test's own.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use assert_cmd::Command;

/// `courier` in `dir`, with the embedded store there (`COURIER_DB`) and no `COURIER_URL`.
pub fn courier(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("courier").expect("the binary");
    command
        .env("COURIER_DB", dir.join("test.db"))
        .env_remove("COURIER_URL")
        .current_dir(dir);
    command
}

/// What `command` prints; it must succeed.
pub fn stdout(command: &mut Command) -> String {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}
