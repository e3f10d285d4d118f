//! Integration tests: one binary (see Cargo.toml `[[test]]`), one module per area.

mod common;
mod craft;
mod gguf;
mod hostile;
mod io;
mod merge;
mod nf4;
mod quantize;
mod runner;
mod text;
mod train;
