//! `pesc-convert`: the command-line front end. Each subcommand lives in its
//! own module and calls into the library crates; this file parses arguments,
//! installs the Ctrl-C handler and maps errors to exit codes.

mod cli;
mod craft;
mod import;
mod inspect;
mod logits;
mod merge_lora;
mod output;
mod progress;
mod publish;
mod quantize;
mod reshard;
mod route_stats;
mod run;
mod train;
mod verify;
mod verify_manifest;

use clap::Parser;
use std::process::ExitCode;

/// A failed check (exit 1), as opposed to bad input (exit 2).
#[derive(Debug)]
pub struct CheckFailed(pub String);

impl std::fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckFailed {}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let result = match args.command {
        cli::Command::Inspect(a) => inspect::run(&a),
        cli::Command::Craft(a) => craft::run_craft(&a),
        cli::Command::Upcycle(a) => craft::run_upcycle(&a),
        cli::Command::Logits(a) => logits::run(&a),
        cli::Command::Verify(a) => verify::run(&a),
        cli::Command::Run(a) => run::run(&a),
        cli::Command::ImportGguf(a) => import::run(&a),
        cli::Command::Reshard(a) => reshard::run(&a),
        cli::Command::VerifyManifest(a) => verify_manifest::run(&a),
        cli::Command::Quantize(a) => quantize::run(&a),
        cli::Command::MergeLora(a) => merge_lora::run(&a),
        cli::Command::Train(a) => train::run(&a),
        cli::Command::RouteStats(a) => route_stats::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// For commands that write a folder: the first Ctrl-C (or SIGTERM) asks the
/// writer to stop and clean up; a second one exits at once.
pub fn stop_cleanly_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        if pesc_io::interrupted() {
            #[allow(clippy::exit)]
            std::process::exit(130);
        }
        pesc_io::interrupt();
    });
}

static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For `train`: the first Ctrl-C (or SIGTERM) asks the loop to stop after the
/// current step, which it then checkpoints; a second one exits at once.
pub fn stop_after_step_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        if STOP_REQUESTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            #[allow(clippy::exit)]
            std::process::exit(130);
        }
    });
}

/// Whether Ctrl-C asked `train` to stop.
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Prints `error: ...` with its causes and picks the exit code.
fn report(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| matches!(c.downcast_ref::<std::io::Error>(), Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe)) {
        return ExitCode::SUCCESS;
    }
    if pesc_io::interrupted() {
        output::note("interrupted; nothing was written");
        return ExitCode::from(130);
    }
    output::error(e);
    if e.downcast_ref::<CheckFailed>().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::from(2)
    }
}
