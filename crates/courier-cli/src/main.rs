//! The `courier` binary: see the `courier_cli` library.

fn main() -> std::process::ExitCode {
    courier_cli::main()
}
