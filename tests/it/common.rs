//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `pesc-convert` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pesc-convert"))
}

/// A committed fixture model folder (`fixtures/models/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models").join(name)
}

/// Runs `pesc-convert ARGS` and returns its output.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(bin()).args(args).output().expect("spawn pesc-convert")
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the exit code, printing stderr on failure.
#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "exit status {:?}\nstderr:\n{}\nstdout:\n{}", o.status, stderr(o), stdout(o));
}

/// Asserts a bad-input failure: exit 2, an `error:` line holding every needle, no panic.
#[track_caller]
pub fn assert_rejects(o: &Output, needles: &[&str]) {
    assert_code(o, 2);
    let err = stderr(o);
    assert!(err.starts_with("error: "), "stderr does not start with `error: `:\n{err}");
    assert!(!err.contains("panicked"), "panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Lists a folder's entries (names), sorted; empty if it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Copies a fixture folder into `dst` (a fresh folder).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| u32::try_from(x.as_u64().unwrap()).unwrap()).collect()
}

/// The `messages` of `fixtures/models/llama-chat.chat.json` as chat messages.
pub fn chat_messages(reference: &serde_json::Value) -> Vec<pesc_hf::ChatMessage> {
    reference["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| pesc_hf::ChatMessage { role: m["role"].as_str().unwrap().into(), content: m["content"].as_str().unwrap().into() })
        .collect()
}
