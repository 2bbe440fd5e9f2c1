//! The `weir` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
