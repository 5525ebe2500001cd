//! The `storegc` binary: parse, run, map the outcome to an exit code.

fn main() -> std::process::ExitCode {
    let cli = storegc::cli::parse();
    match storegc::commands::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!("storegc: {err:#}");
            storegc::exit::ExitCode::BadInput.into()
        }
    }
}
