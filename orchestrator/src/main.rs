//! The `sbx` binary: the server (`sbx serve`) and its client.

fn main() -> std::process::ExitCode {
    sbx_orchestrator::cli::main()
}
