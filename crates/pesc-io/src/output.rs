//! Output folders that appear atomically and durably, with `SHA256SUMS` and
//! `pesc-manifest.json`.
//!
//! Everything is written into a hidden staging folder beside the target
//! (`.NAME.pesc-staging-PID-NONCE`). Each file is fsynced, then the staging
//! folder, then it is renamed onto the target and the parent is fsynced. A
//! failed, interrupted or killed run therefore leaves nothing at the target;
//! staging folders of dead processes are removed by the next run.

use crate::error::{Error, IoContext, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Name of the checksum file (`sha256sum -c SHA256SUMS`).
pub const SHA256SUMS: &str = "SHA256SUMS";
/// Name of the manifest.
pub const MANIFEST: &str = "pesc-manifest.json";
/// Version of the manifest format (`schemas/manifest.schema.json`).
pub const MANIFEST_VERSION: u64 = 1;

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

fn check_interrupt() -> Result<()> {
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What the manifest records about the run besides the files it wrote.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Tool version.
    pub tool_version: String,
    /// The subcommand (`craft`, `quantize` ...).
    pub command: String,
    /// Canonical parameters (an object; written with sorted keys).
    pub parameters: Value,
    /// Inputs: role (`model`, `adapter` ...) -> file name within that input -> digest.
    pub inputs: BTreeMap<String, BTreeMap<String, FileDigest>>,
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
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::DEPTH);
        let (free_tx, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(Self::DEPTH);
        for _ in 0..Self::DEPTH {
            let _ = free_tx.send(Vec::with_capacity(Self::PIECE));
        }
        let worker = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for piece in rx {
                h.update(&piece);
                // Hand the buffer back; the writer may be gone already.
                let _ = free_tx.send(piece);
            }
            hex(&h.finalize())
        });
        HashPipe { tx: Some(tx), free, worker: Some(worker) }
    }

    fn update(&self, data: &[u8]) {
        let Some(tx) = &self.tx else { return };
        for piece in data.chunks(Self::PIECE) {
            let Ok(mut buf) = self.free.recv() else { return };
            buf.clear();
            buf.extend_from_slice(piece);
            let _ = tx.send(buf);
        }
    }

    fn finish(mut self) -> String {
        drop(self.tx.take());
        self.worker.take().and_then(|w| w.join().ok()).unwrap_or_default()
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
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl OutputFile<'_> {
    /// Bytes written so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes and fsyncs the file and records its digest.
    pub fn finish(self) -> Result<FileDigest> {
        let path = self.dir.staging.join(&self.name);
        check_interrupt()?;
        let file = self.writer.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        file.sync_all().at(&path)?;
        let digest = FileDigest { bytes: self.bytes, sha256: self.hasher.finish() };
        self.dir.files.insert(self.name, digest.clone());
        Ok(digest)
    }
}

/// An output folder under construction.
#[derive(Debug)]
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    force: bool,
    files: BTreeMap<String, FileDigest>,
    committed: bool,
}

impl OutputDir {
    /// Checks the target path and creates the staging folder beside it.
    ///
    /// Refused: a target that exists (unless `force`), is a symlink, equals or
    /// lies inside one of `inputs`, or contains one of them; a missing parent.
    pub fn create(target: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        let bad = |problem: String| Error::OutputPath { path: target.into(), problem };
        let name = target.file_name().ok_or_else(|| bad("has no file name".into()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(bad(format!("parent folder `{}` does not exist", parent.display())));
        }
        let parent = fs::canonicalize(&parent).at(&parent)?;
        let target_abs = parent.join(name);
        for input in inputs {
            let input = fs::canonicalize(input).at(input)?;
            if target_abs == input || target_abs.starts_with(&input) {
                return Err(bad(format!("is the input `{}` or inside it; write the output elsewhere", input.display())));
            }
            if input.starts_with(&target_abs) {
                return Err(bad(format!("contains the input `{}`; write the output elsewhere", input.display())));
            }
        }
        match fs::symlink_metadata(&target_abs) {
            Ok(m) if m.file_type().is_symlink() => return Err(bad("is a symlink; refusing to write through it".into())),
            Ok(m) if !force => {
                let _ = m;
                return Err(Error::OutputExists { path: target.into() });
            }
            Ok(m) if !m.is_dir() => return Err(bad("exists and is not a folder; --force replaces folders only".into())),
            _ => {}
        }
        let stem = name.to_string_lossy();
        remove_stale_staging(&parent, &stem);
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let staging = parent.join(format!(".{stem}.pesc-staging-{}-{nonce:08x}", std::process::id()));
        fs::create_dir(&staging).at(&staging)?;
        Ok(OutputDir { target: target_abs, staging, force, files: BTreeMap::new(), committed: false })
    }

    /// The final path.
    #[must_use]
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The staging folder (files appear here until [`OutputDir::commit`]).
    #[must_use]
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Starts a file in the folder. `name` must be a plain file name.
    pub fn create_file(&mut self, name: &str) -> Result<OutputFile<'_>> {
        check_interrupt()?;
        if name.contains('/') || name == SHA256SUMS || name == MANIFEST || self.files.contains_key(name) {
            return Err(Error::OutputPath { path: self.staging.join(name), problem: "is not a new plain file name".into() });
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
        let path = self.staging.join(name);
        let mut f = self.create_file(name)?;
        f.write_all(bytes).map_err(|e| write_error(&path, e))?;
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
        let parent = self.target.parent().map(Path::to_path_buf).unwrap_or_default();
        if self.force && fs::symlink_metadata(&self.target).is_ok() {
            let old =
                parent.join(format!(".{}.pesc-old-{}", self.target.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
            fs::rename(&self.target, &old).at(&self.target)?;
            if let Err(e) = fs::rename(&self.staging, &self.target) {
                let _ = fs::rename(&old, &self.target);
                return Err(Error::io(&self.target, e));
            }
            self.committed = true;
            fs::remove_dir_all(&old).at(&old)?;
        } else {
            fs::rename(&self.staging, &self.target).at(&self.target)?;
            self.committed = true;
        }
        sync_dir(&parent)?;
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Maps a write error, naming the file.
pub(crate) fn write_error(path: &Path, e: std::io::Error) -> Error {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Error::Interrupted
    } else {
        Error::io(path, e)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn manifest_json(run: &RunRecord, files: &BTreeMap<String, FileDigest>) -> Value {
    let digest = |path: &str, d: &FileDigest| json!({"path": path, "bytes": d.bytes, "sha256": d.sha256});
    let inputs: Vec<Value> = run
        .inputs
        .iter()
        .flat_map(|(role, fs)| {
            fs.iter().map(move |(p, d)| {
                let mut v = digest(p, d);
                v["role"] = json!(role);
                v
            })
        })
        .collect();
    json!({
        "format_version": MANIFEST_VERSION,
        "tool": {"name": "pesc-convert", "version": run.tool_version},
        "command": run.command,
        "parameters": sort_keys(&run.parameters),
        "inputs": inputs,
        "files": files.iter().map(|(p, d)| digest(p, d)).collect::<Vec<_>>(),
    })
}

/// Returns `v` with every object's keys sorted (for canonical output).
#[must_use]
pub fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
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
            let path = e.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// The outcome of [`verify_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCheck {
    /// Files whose size and hash matched, in manifest order.
    pub verified: Vec<String>,
    /// The first file that did not match, and how.
    pub failure: Option<(String, String)>,
}

/// Recomputes every hash listed in `DIR/pesc-manifest.json` (and in
/// `SHA256SUMS` when present) and reports the first mismatch, missing file or
/// file the manifest does not list. A malformed manifest is an error.
pub fn verify_manifest(dir: &Path) -> Result<ManifestCheck> {
    let path = dir.join(MANIFEST);
    let bytes = crate::checkpoint::read_capped(&path, 64 << 20)?;
    let structure = |what: String| Error::Structure { path: path.clone(), what };
    let v = crate::json::parse_strict(&bytes).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    if v.get("format_version").and_then(Value::as_u64) != Some(MANIFEST_VERSION) {
        return Err(structure(format!("`format_version` must be {MANIFEST_VERSION}")));
    }
    let Some(files) = v.get("files").and_then(Value::as_array) else {
        return Err(structure("`files` is missing or not an array".into()));
    };
    let mut listed = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let name = f.get("path").and_then(Value::as_str);
        let bytes = f.get("bytes").and_then(Value::as_u64);
        let sha = f.get("sha256").and_then(Value::as_str);
        let (Some(name), Some(bytes), Some(sha)) = (name, bytes, sha) else {
            return Err(structure(format!("`files[{i}]` needs `path`, `bytes` and `sha256`")));
        };
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." || name == "." {
            return Err(structure(format!("`files[{i}].path` {name:?} is not a plain file name")));
        }
        if listed.insert(name.to_owned(), FileDigest { bytes, sha256: sha.to_owned() }).is_some() {
            return Err(structure(format!("`{name}` is listed twice in `files`")));
        }
    }
    let mut sums = BTreeMap::new();
    let sums_path = dir.join(SHA256SUMS);
    if sums_path.exists() {
        let text = crate::checkpoint::read_capped(&sums_path, 16 << 20)?;
        for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
            let parsed = line.split_once("  ").or_else(|| line.split_once(" *"));
            let Some((sha, name)) = parsed.filter(|(s, _)| s.len() == 64) else {
                return Err(Error::Structure { path: sums_path.clone(), what: format!("line {} is not `<sha256>  <file>`", i + 1) });
            };
            sums.insert(name.to_owned(), sha.to_owned());
        }
    }
    let mut check = ManifestCheck { verified: Vec::new(), failure: None };
    let fail = |check: &mut ManifestCheck, name: &str, problem: String| {
        check.failure = Some((name.to_owned(), problem));
    };
    for (name, want) in &listed {
        let file = dir.join(name);
        crate::checkpoint::confined(dir, &file).or_else(|e| match e {
            Error::Io { .. } => Ok(()),
            other => Err(other),
        })?;
        let got = match hash_file(&file) {
            Ok(d) => d,
            Err(_) if !file.exists() => {
                fail(&mut check, name, "is listed in the manifest but missing".into());
                return Ok(check);
            }
            Err(e) => return Err(e),
        };
        if got.bytes != want.bytes {
            fail(&mut check, name, format!("has {} bytes, the manifest says {}", got.bytes, want.bytes));
            return Ok(check);
        }
        if got.sha256 != want.sha256 {
            fail(&mut check, name, format!("has SHA-256 {}, the manifest says {}", got.sha256, want.sha256));
            return Ok(check);
        }
        if let Some(s) = sums.get(name.as_str()) {
            if *s != got.sha256 {
                fail(&mut check, name, format!("has SHA-256 {}, `SHA256SUMS` says {s}", got.sha256));
                return Ok(check);
            }
        }
        check.verified.push(name.clone());
    }
    if let Some(name) = sums.keys().find(|n| !listed.contains_key(*n) && n.as_str() != MANIFEST) {
        fail(&mut check, name, "is in `SHA256SUMS` but not in the manifest".into());
        return Ok(check);
    }
    if let Some(s) = sums.get(MANIFEST) {
        let got = hash_file(&path)?;
        if *s != got.sha256 {
            fail(&mut check, MANIFEST, format!("has SHA-256 {}, `SHA256SUMS` says {s}", got.sha256));
            return Ok(check);
        }
    }
    let mut present: Vec<String> = fs::read_dir(dir)
        .at(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST && n != SHA256SUMS && !listed.contains_key(n))
        .collect();
    present.sort();
    if let Some(extra) = present.first() {
        fail(&mut check, extra, "is in the folder but not in the manifest".into());
    }
    Ok(check)
}

/// Writes one file atomically: a temporary file beside `path`, fsynced, then
/// renamed over it (only with `force` when `path` exists) and the parent fsynced.
pub fn write_file_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let bad = |problem: &str| Error::OutputPath { path: path.into(), problem: problem.into() };
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(bad("is a symlink; refusing to write through it")),
        Ok(m) if m.is_dir() => return Err(bad("is a folder")),
        Ok(_) if !force => return Err(Error::OutputExists { path: path.into() }),
        _ => {}
    }
    let name = path.file_name().ok_or_else(|| bad("has no file name"))?.to_string_lossy().into_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(bad("has no existing parent folder"));
    }
    let tmp = parent.join(format!(".{name}.pesc-staging-{}", std::process::id()));
    let result = write_synced(&tmp, bytes).and_then(|()| fs::rename(&tmp, path).at(path)).and_then(|()| sync_dir(&parent));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Checks every line of `DIR/SHA256SUMS`; returns the first mismatching or
/// missing file and what is wrong with it, or `None` when all match.
pub fn check_sha256sums(dir: &Path) -> Result<Option<(String, String)>> {
    let path = dir.join(SHA256SUMS);
    let text = crate::checkpoint::read_capped(&path, 16 << 20)?;
    for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
        let Some((want, name)) = line.split_once("  ").or_else(|| line.split_once(" *")).filter(|(s, _)| s.len() == 64) else {
            return Err(Error::Structure { path: path.clone(), what: format!("line {} is not `<sha256>  <file>`", i + 1) });
        };
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(Error::Structure { path: path.clone(), what: format!("line {} names `{name}`, not a plain file name", i + 1) });
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Ok(Some((name.to_owned(), "is listed in `SHA256SUMS` but missing".into())));
        }
        let got = hash_file(&file)?;
        if got.sha256 != want {
            return Ok(Some((name.to_owned(), format!("has SHA-256 {}, `SHA256SUMS` says {want}", got.sha256))));
        }
    }
    Ok(None)
}
