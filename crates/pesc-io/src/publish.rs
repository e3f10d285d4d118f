//! Outputs that appear atomically and durably: every file and folder this
//! tool writes goes through here.
//!
//! An output is written under a hidden staging name beside its target
//! (`.NAME.pesc-staging-PID-NONCE`), fsynced, then renamed onto the target,
//! and the parent folder is fsynced. A failed, interrupted or killed run
//! therefore leaves nothing at the target (staging outputs of dead processes
//! are removed by the next run), and an existing target is replaced only with
//! `force`, by setting it aside (`.NAME.pesc-old`) until the new one is in
//! place.
//!
//! - [`StagedFile`]: one file (a GGUF export, logits, an SVG, a run's outputs).
//! - [`OutputDir`]: a folder whose files are hashed as they are written; its
//!   commit adds `pesc-manifest.json` and `SHA256SUMS`.
//! - [`publish`]: an [`OutputDir`] filled by a transformation while its
//!   inputs are hashed on another thread, then committed with the manifest.

use crate::error::{Error, IoContext, Result};
use crate::manifest::{manifest_json, RunRecord, MANIFEST, SHA256SUMS};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The version every manifest and model card records (the workspace's).
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks every writer to stop at its next write (called from a signal handler).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether [`interrupt`] was called.
#[must_use]
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with [`Error::Interrupted`] once [`interrupt`] was called.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Size and SHA-256 of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// Hashes a file by streaming it.
pub fn hash_file(path: &Path) -> Result<FileDigest> {
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest { bytes, sha256: hex(&h.finalize()) })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 computed on a second thread, fed in pieces of at most
/// [`HashPipe::PIECE`] bytes through a fixed pool of [`HashPipe::DEPTH`]
/// buffers, so hashing overlaps writing, memory stays bounded and no buffer
/// is allocated after the first few.
struct HashPipe {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<String>>,
}

impl HashPipe {
    const PIECE: usize = 1 << 20;
    const DEPTH: usize = 8;

    fn new() -> Self {
        Self::spawn(|pieces, free| {
            let mut h = Sha256::new();
            for piece in pieces {
                h.update(&piece);
                // Hand the buffer back; the writer may be gone already.
                let _ = free.send(piece);
            }
            hex(&h.finalize())
        })
    }

    /// A pipe whose thread runs `worker` on the pieces, handing each buffer back.
    fn spawn(
        worker: impl FnOnce(std::sync::mpsc::Receiver<Vec<u8>>, std::sync::mpsc::SyncSender<Vec<u8>>) -> String + Send + 'static,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::DEPTH);
        let (free_tx, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::DEPTH);
        for _ in 0..Self::DEPTH {
            let _ = free_tx.send(Vec::with_capacity(Self::PIECE));
        }
        let worker = std::thread::spawn(move || worker(rx, free_tx));
        HashPipe { tx: Some(tx), free, worker: Some(worker) }
    }

    /// Feeds `data`; `false` once the hashing thread has stopped.
    fn update(&self, data: &[u8]) -> bool {
        let Some(tx) = &self.tx else { return false };
        for piece in data.chunks(Self::PIECE) {
            let Ok(mut buf) = self.free.recv() else { return false };
            buf.clear();
            buf.extend_from_slice(piece);
            if tx.send(buf).is_err() {
                return false;
            }
        }
        true
    }

    /// The digest; `None` when the hashing thread died.
    fn finish(mut self) -> Option<String> {
        drop(self.tx.take());
        self.worker.take().and_then(|w| w.join().ok())
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Maps a write error, naming the file (or the interruption that caused it).
pub(crate) fn write_error(path: &Path, e: std::io::Error) -> Error {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Error::Interrupted
    } else {
        Error::io(path, e)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// What an output path must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Folder,
}

/// A checked output path.
#[derive(Debug, Clone)]
struct Target {
    /// The path as given (for messages).
    given: PathBuf,
    /// The absolute path.
    path: PathBuf,
    /// Its canonical parent.
    parent: PathBuf,
    /// Its file name.
    name: String,
}

impl Target {
    /// Checks `target`: a file name, an existing parent, not a symlink, absent
    /// unless `force` (and then of the same kind), not one of `inputs`, inside
    /// one, or holding one.
    fn check(target: &Path, force: bool, kind: Kind, inputs: &[&Path]) -> Result<Self> {
        let bad = |problem: String| Error::OutputPath { path: target.into(), problem };
        let name = target.file_name().ok_or_else(|| bad("has no file name".into()))?.to_string_lossy().into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(bad(format!("parent folder `{}` does not exist", parent.display())));
        }
        let parent = fs::canonicalize(&parent).at(&parent)?;
        let path = parent.join(&name);
        for input in inputs {
            let Ok(input) = fs::canonicalize(input) else { continue };
            if path == input || path.starts_with(&input) {
                return Err(bad(format!("is the input `{}` or inside it; write the output elsewhere", input.display())));
            }
            if input.starts_with(&path) {
                return Err(bad(format!("contains the input `{}`; write the output elsewhere", input.display())));
            }
        }
        match (fs::symlink_metadata(&path), kind) {
            (Ok(m), _) if m.file_type().is_symlink() => return Err(bad("is a symlink; refusing to write through it".into())),
            (Ok(_), _) if !force => return Err(Error::OutputExists { path: target.into() }),
            (Ok(m), Kind::Folder) if !m.is_dir() => return Err(bad("exists and is not a folder; --force replaces folders only".into())),
            (Ok(m), Kind::File) if m.is_dir() => return Err(bad("is a folder; give a file name".into())),
            _ => {}
        }
        Ok(Target { given: target.into(), path, parent, name })
    }

    /// A fresh staging path beside the target, after clearing dead processes' ones.
    fn staging(&self) -> PathBuf {
        remove_stale_staging(&self.parent, &self.name);
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        self.parent.join(format!(".{}.pesc-staging-{}-{nonce:08x}", self.name, std::process::id()))
    }

    /// Renames `staging` onto the target and makes the rename durable. An existing
    /// target (only with `force`) is set aside until the new one is in place.
    fn replace_with(&self, staging: &Path, force: bool) -> Result<()> {
        check_interrupt()?;
        let old = set_aside_path(&self.path);
        let exists = fs::symlink_metadata(&self.path).is_ok();
        if exists && !force {
            // It appeared while the output was being written.
            return Err(Error::OutputExists { path: self.given.clone() });
        }
        if exists {
            remove_any(&old).at(&old)?;
            fs::rename(&self.path, &old).at(&self.path)?;
        }
        if let Err(e) = fs::rename(staging, &self.path) {
            if exists {
                let _ = fs::rename(&old, &self.path);
            }
            return Err(Error::io(&self.path, e));
        }
        // The set-aside copy, now or from a run killed between the two renames.
        remove_any(&old).at(&old)?;
        sync_dir(&self.parent)
    }
}

/// Removes a file or folder; absent is fine.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Where an existing target is set aside while `--force` replaces it
/// (`.NAME.pesc-old` beside it). Only a run killed between the two renames
/// leaves it behind, with no target: it then holds the previous version.
#[must_use]
pub fn set_aside_path(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.pesc-old"))
}

/// Removes `.NAME.pesc-staging-PID*` folders and files left by processes
/// that no longer run (a killed run's staging output).
pub fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.pesc-staging-");
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(&prefix) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            let _ = remove_any(&e.path());
        }
    }
}

/// A file being written, whose errors name it.
pub trait Sink {
    /// Appends `bytes`.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
}

/// One file written beside its target and renamed onto it by [`StagedFile::commit`];
/// dropped uncommitted, it is removed.
pub struct StagedFile {
    target: Target,
    staging: PathBuf,
    writer: BufWriter<File>,
    bytes: u64,
    force: bool,
    committed: bool,
}

impl StagedFile {
    /// Checks `target` (see [`OutputDir::create`]; `inputs` are files and folders
    /// it must not be or lie in) and creates the staging file.
    pub fn create(target: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        let target = Target::check(target, force, Kind::File, inputs)?;
        let staging = target.staging();
        let file = OpenOptions::new().write(true).create_new(true).open(&staging).at(&staging)?;
        Ok(StagedFile { target, staging, writer: BufWriter::with_capacity(1 << 20, file), bytes: 0, force, committed: false })
    }

    /// The target, as given.
    #[must_use]
    pub fn target(&self) -> &Path {
        &self.target.given
    }

    /// Flushes and fsyncs the file, renames it onto the target and makes that
    /// durable; returns its size.
    pub fn commit(mut self) -> Result<u64> {
        check_interrupt()?;
        self.writer.flush().map_err(|e| write_error(&self.target.given, e))?;
        let file = self.writer.get_ref();
        file.sync_all().map_err(|e| write_error(&self.target.given, e))?;
        let bytes = file.metadata().at(&self.staging)?.len();
        self.target.replace_with(&self.staging, self.force)?;
        self.committed = true;
        Ok(bytes)
    }
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            // Not `ErrorKind::Interrupted`: `write_all` would retry that forever.
            return Err(std::io::Error::other("interrupted"));
        }
        let n = self.writer.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl Sink for StagedFile {
    /// Appends `bytes`; an error names the target.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes).map_err(|e| write_error(&self.target.given, e))
    }
    fn written(&self) -> u64 {
        self.bytes
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.staging);
        }
    }
}

/// Writes one file atomically and durably (see [`StagedFile`]); an existing
/// file is replaced only with `force`.
pub fn write_file_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let mut f = StagedFile::create(path, force, &[])?;
    f.write_bytes(bytes)?;
    f.commit().map(|_| ())
}

/// A file being written into an [`OutputDir`], hashed as it goes.
pub struct OutputFile<'a> {
    dir: &'a mut OutputDir,
    name: String,
    writer: BufWriter<File>,
    hasher: HashPipe,
    bytes: u64,
}

impl Write for OutputFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            // Not `ErrorKind::Interrupted`: `write_all` would retry that forever.
            return Err(std::io::Error::other("interrupted"));
        }
        let n = self.writer.write(buf)?;
        if !self.hasher.update(&buf[..n]) {
            return Err(std::io::Error::other("the hashing thread stopped"));
        }
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl OutputFile<'_> {
    /// The file's path in the output folder (for messages).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.target.given.join(&self.name)
    }

    /// Flushes and fsyncs the file and records its digest.
    pub fn finish(self) -> Result<FileDigest> {
        let path = self.path();
        check_interrupt()?;
        let file = self.writer.into_inner().map_err(|e| write_error(&path, e.into_error()))?;
        file.sync_all().map_err(|e| write_error(&path, e))?;
        let sha256 = self.hasher.finish().ok_or_else(|| Error::HashingStopped { path: path.clone() })?;
        let digest = FileDigest { bytes: self.bytes, sha256 };
        self.dir.files.insert(self.name, digest.clone());
        Ok(digest)
    }
}

impl Sink for OutputFile<'_> {
    /// Appends `bytes`; an error names the file.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes).map_err(|e| write_error(&self.path(), e))
    }
    fn written(&self) -> u64 {
        self.bytes
    }
}

/// An output folder under construction.
#[derive(Debug)]
pub struct OutputDir {
    target: Target,
    staging: PathBuf,
    force: bool,
    files: BTreeMap<String, FileDigest>,
    committed: bool,
}

impl OutputDir {
    /// Checks the target path and creates the staging folder beside it.
    ///
    /// Refused: a target that exists (unless `force`, and then only a folder),
    /// is a symlink, equals or lies inside one of `inputs`, or contains one of
    /// them; a missing parent.
    pub fn create(target: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        let target = Target::check(target, force, Kind::Folder, inputs)?;
        let staging = target.staging();
        fs::create_dir(&staging).at(&staging)?;
        Ok(OutputDir { target, staging, force, files: BTreeMap::new(), committed: false })
    }

    /// The final path.
    #[must_use]
    pub fn target(&self) -> &Path {
        &self.target.path
    }

    /// The staging folder (files appear here until [`OutputDir::commit`]).
    #[must_use]
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Starts a file in the folder. `name` must be a plain file name.
    pub fn create_file(&mut self, name: &str) -> Result<OutputFile<'_>> {
        check_interrupt()?;
        if name.is_empty() || name.contains('/') || name == SHA256SUMS || name == MANIFEST || self.files.contains_key(name) {
            return Err(Error::OutputPath { path: self.target.given.join(name), problem: "is not a new plain file name".into() });
        }
        let path = self.staging.join(name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path).at(&path)?;
        Ok(OutputFile {
            dir: self,
            name: name.to_owned(),
            writer: BufWriter::with_capacity(1 << 20, file),
            hasher: HashPipe::new(),
            bytes: 0,
        })
    }

    /// Writes a small file whole.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<FileDigest> {
        let mut f = self.create_file(name)?;
        f.write_bytes(bytes)?;
        f.finish()
    }

    /// Files written so far with their digests.
    #[must_use]
    pub fn files(&self) -> &BTreeMap<String, FileDigest> {
        &self.files
    }

    /// Writes `pesc-manifest.json` and `SHA256SUMS`, makes everything durable
    /// and moves the folder onto its target.
    pub fn commit(mut self, run: &RunRecord) -> Result<PathBuf> {
        let manifest = manifest_json(run, &self.files);
        let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        bytes.push(b'\n');
        let path = self.staging.join(MANIFEST);
        write_synced(&path, &bytes)?;
        self.files.insert(MANIFEST.into(), FileDigest { bytes: bytes.len() as u64, sha256: hex(&Sha256::digest(&bytes)) });
        let sums: String = self.files.iter().map(|(n, d)| format!("{}  {n}\n", d.sha256)).collect();
        write_synced(&self.staging.join(SHA256SUMS), sums.as_bytes())?;
        check_interrupt()?;
        sync_dir(&self.staging)?;
        self.target.replace_with(&self.staging, self.force)?;
        self.committed = true;
        Ok(self.target.path.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).at(path)?;
    f.write_all(bytes).map_err(|e| write_error(path, e))?;
    f.sync_all().map_err(|e| write_error(path, e))
}

/// Files an output depends on, recorded in its manifest under `role`.
#[derive(Debug, Clone)]
pub struct Input {
    /// `model`, `adapter`, `gguf` ...
    pub role: String,
    /// The folder (or file) the output must not be written into or over.
    pub root: PathBuf,
    /// The files to hash.
    pub files: Vec<PathBuf>,
}

impl Input {
    /// Size and SHA-256 of each file, by file name.
    fn digests(&self) -> Result<BTreeMap<String, FileDigest>> {
        let mut out = BTreeMap::new();
        for p in &self.files {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.insert(name, hash_file(p)?);
        }
        Ok(out)
    }
}

/// What a published folder records about the run that made it.
#[derive(Debug, Clone)]
pub struct Publication<'a> {
    /// The output folder.
    pub target: &'a Path,
    /// Replace an existing folder.
    pub force: bool,
    /// The subcommand.
    pub command: &'a str,
    /// Its canonical parameters (an object).
    pub parameters: Value,
    /// The inputs.
    pub inputs: Vec<Input>,
}

/// Creates the staged folder of `p`, fills it with `write` while the inputs
/// are hashed on another thread (reading them once more costs no wall time),
/// and commits it with the manifest. Returns the target and `write`'s result.
pub fn publish<T, E: From<Error>>(p: Publication<'_>, write: impl FnOnce(&mut OutputDir) -> Result<T, E>) -> Result<(PathBuf, T), E> {
    let roots: Vec<&Path> = p.inputs.iter().map(|i| i.root.as_path()).collect();
    let mut dir = OutputDir::create(p.target, p.force, &roots)?;
    let (digests, value) = std::thread::scope(|s| {
        let hashing = s.spawn(|| p.inputs.iter().map(|i| Ok((i.role.clone(), i.digests()?))).collect::<Result<BTreeMap<_, _>>>());
        let value = write(&mut dir);
        let digests = hashing.join().unwrap_or_else(|_| Err(Error::HashingStopped { path: p.target.into() }));
        (digests, value)
    });
    let value = value?;
    let run = RunRecord { command: p.command.into(), parameters: p.parameters, inputs: digests? };
    Ok((dir.commit(&run)?, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `dir` hashed by a thread that dies after the first piece.
    fn file_with_dying_hasher(dir: &mut OutputDir) -> OutputFile<'_> {
        let path = dir.staging.join("model.safetensors");
        let file = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        let hasher = HashPipe::spawn(|pieces, _| {
            let _ = pieces.recv();
            panic!("the hashing thread dies");
        });
        OutputFile { dir, name: "model.safetensors".into(), writer: BufWriter::new(file), hasher, bytes: 0 }
    }

    #[test]
    fn a_dead_hashing_thread_fails_the_file_instead_of_an_empty_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = OutputDir::create(&tmp.path().join("out"), false, &[]).unwrap();
        let mut f = file_with_dying_hasher(&mut dir);
        // Writing eventually fails (the pipe has no reader), or finishing does: never a digest.
        let written = (0..64).try_for_each(|_| f.write_bytes(&[7u8; HashPipe::PIECE]));
        let result = written.and_then(|()| f.finish());
        match result {
            Err(Error::HashingStopped { path }) => assert!(path.ends_with("out/model.safetensors"), "{path:?}"),
            Err(Error::Io { path, source }) => {
                assert!(path.ends_with("out/model.safetensors"), "{path:?}");
                assert!(source.to_string().contains("hashing thread stopped"), "{source}");
            }
            other => panic!("expected a hashing failure, got {other:?}"),
        }
        assert!(dir.files().is_empty(), "no digest recorded");
        drop(dir);
        assert!(!tmp.path().join("out").exists());
    }

    #[test]
    fn a_live_hashing_thread_gives_the_files_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = OutputDir::create(&tmp.path().join("out"), false, &[]).unwrap();
        let d = dir.write_file("a.txt", b"abc").unwrap();
        assert_eq!(d.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
