//! The process Ash runs inside every sandbox; see the `ash-bridge` crate.

fn main() -> std::process::ExitCode {
    ash_bridge::main()
}
