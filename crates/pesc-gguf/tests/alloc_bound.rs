//! The reader's memory is bounded by the file's size, whatever the header
//! claims: a counting allocator measures the peak heap growth of
//! `GgufFile::open` on the calling thread.
// A `GlobalAlloc` cannot be written without `unsafe`; this test binary's
// allocator only forwards to `System` and counts.
#![allow(unsafe_code)]

mod common;

use common::*;
use pesc_gguf::{write_gguf, Metadata, StringArray};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth, in bytes, while opening `bytes` (written to a temp file first).
fn peak_while_opening(bytes: &[u8]) -> (usize, bool) {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let path = f.path().to_owned();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let ok = pesc_gguf::GgufFile::open(&path).is_ok();
    let peak = PEAK.with(Cell::get) - base;
    (usize::try_from(peak).unwrap_or(0), ok)
}

#[test]
fn hostile_claims_allocate_at_most_the_file_size() {
    let claims: Vec<(&str, Vec<u8>)> = vec![
        ("counts 2^62", [header(1 << 62, 1 << 62), vec![0xff; 76]].concat()),
        ("counts at the bound", [header(0, 5), vec![0; 76]].concat()),
        ("u8 array of 2^30", [header(0, 1), kv_array("a", T_U8, 1 << 30, &[0; 50])].concat()),
        ("u8 array of 80", [header(0, 1), kv_array("a", T_U8, 80, &[0; 49])].concat()),
        ("string array of 2^30", [header(0, 1), kv_array("a", T_STRING, 1 << 30, &[0; 50])].concat()),
        ("string array of 9", [header(0, 1), kv_array("a", T_STRING, 9, &[0; 64])].concat()),
        ("string of u64::MAX - 1", [header(0, 1), kv_raw(b"s", T_STRING, &(u64::MAX - 1).to_le_bytes()), vec![0; 50]].concat()),
        ("string of 2^30", [header(0, 1), kv_raw(b"s", T_STRING, &(1u64 << 30).to_le_bytes()), vec![0; 50]].concat()),
        ("key of 65535", [header(0, 1), 65_535u64.to_le_bytes().to_vec(), vec![b'k'; 60]].concat()),
        ("tensor of i64::MAX bytes", [header(1, 0), tensor_info(b"t", &[i64::MAX as u64], I8, 0), vec![0; 40]].concat()),
        ("tensor name of u64::MAX", [header(1, 0), u64::MAX.to_le_bytes().to_vec(), vec![0; 60]].concat()),
    ];
    for (what, mut bytes) in claims {
        bytes.resize(bytes.len().max(100), 0);
        let (peak, ok) = peak_while_opening(&bytes);
        assert!(!ok, "{what}: opened");
        // The file's bytes once, plus paths and error messages.
        assert!(peak <= bytes.len() + 1024, "{what}: peak heap growth {peak} bytes for a {}-byte file", bytes.len());
    }
}

#[test]
fn a_large_vocabulary_needs_memory_linear_in_the_file() {
    let tokens: StringArray = (0..50_000).map(|i| format!("t{i}")).collect();
    let mut md = Metadata::new();
    md.push("tokenizer.ggml.tokens", tokens).unwrap();
    md.push("tokenizer.ggml.scores", vec![0.5f32; 50_000]).unwrap();
    md.push("tokenizer.ggml.token_type", vec![1i32; 50_000]).unwrap();
    let bytes = write_gguf(Vec::new(), &md, &[]).unwrap();
    let (peak, ok) = peak_while_opening(&bytes);
    assert!(ok);
    // Offsets (8 bytes per token, as on disk), the text, the typed vectors,
    // and one 64 KiB read buffer; growth by doubling at most doubles each.
    assert!(peak <= 2 * bytes.len() + (64 << 10), "peak heap growth {peak} bytes for a {}-byte file", bytes.len());
}
