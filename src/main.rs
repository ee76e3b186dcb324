//! The `roost` broker binary: `roost --help` says how to use it, and
//! `deploy/roost.toml` documents every setting of its configuration file.

mod cli;

use clap::Parser;
use cli::args::{Args, Command};
use cli::config;
use cli::error::ConfigError;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::CheckConfig { file }) => return check_config(file),
        #[cfg(feature = "ledger")]
        Some(Command::Passwd(p)) => return cli::passwd::run(p),
        None => {}
    }
    let file = match args.config.as_deref().map(config::load).transpose() {
        Ok(f) => f,
        Err(e) => return refuse(&e),
    };
    let config = match cli::args::resolve(file, &args) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    if args.print_config {
        // Secrets written in the file stay out of what is printed.
        #[cfg(feature = "cluster")]
        let config = {
            let mut config = config;
            if let Some(c) = config.cluster.as_mut() {
                c.credentials = c.credentials.as_ref().map(|c| c.redacted());
            }
            config
        };
        return match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("roost: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = cli::logging::init(&config.log) {
        return refuse(&e);
    }
    if let Err(e) = cli::serve::check_files(&config) {
        return refuse(&e);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.workers {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roost: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::serve::run(config))
}

fn refuse(e: &ConfigError) -> ExitCode {
    eprintln!("roost: {e}");
    ExitCode::from(e.exit_code())
}

/// `roost check-config FILE`: 0 valid, 2 invalid, 1 unreadable.
fn check_config(file: &Path) -> ExitCode {
    // As `roost --config FILE` would run it, with no other flag.
    let no_flags = Args::parse_from(["roost"]);
    let checked = config::load(file)
        .and_then(|c| cli::args::resolve(Some(c), &no_flags))
        .and_then(|c| cli::serve::check_files(&c));
    match checked {
        Ok(()) => {
            println!("{}: valid", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => refuse(&e),
    }
}
