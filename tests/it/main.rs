//! Integration tests: one binary (see Cargo.toml `[[test]]`), one module per area.

mod common;
mod hostile;
mod craft;
mod io;
mod runner;
mod text;
