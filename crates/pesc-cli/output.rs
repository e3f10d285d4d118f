//! Terminal output: data on stdout, messages on stderr.

#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::Write;

/// Writes data to stdout (a broken pipe surfaces as an error the caller maps to exit 0).
pub fn data(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A message for the user on stderr.
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// A warning on stderr.
pub fn warn(text: &str) {
    eprintln!("warning: {text}");
}

/// An error and its causes, in the `error:` / `Caused by:` form.
pub fn error(e: &anyhow::Error) {
    let mut msg = format!("error: {e}");
    let mut prev = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        // thiserror's `transparent` and `#[from]` wrappers repeat their source.
        if c != prev && !prev.contains(&c) {
            msg.push_str(&format!("\n  Caused by: {c}"));
        }
        prev = c;
    }
    eprintln!("{msg}");
}

pub use pesc_hf::thousands;

/// A byte count in binary units: 1536 -> 1.5 KiB.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
