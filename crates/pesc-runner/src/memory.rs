//! How much memory there is, and how much this process has used (Linux
//! `/proc` and cgroup files; `None` where they cannot be read).

use std::path::Path;

/// A `/proc`-style `key: N kB` line's value in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Memory this process may still use: `MemAvailable`, lowered to the room
/// left under a cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`)
/// when there is one.
#[must_use]
pub fn available() -> Option<u64> {
    let system = read(Path::new("/proc/meminfo")).and_then(|t| kib_field(&t, "MemAvailable:"));
    let cgroup = read(Path::new("/proc/self/cgroup")).and_then(|t| {
        let rel = t.lines().find_map(|l| l.strip_prefix("0::"))?.trim().to_owned();
        let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let max: u64 = read(&dir.join("memory.max"))?.trim().parse().ok()?;
        let used: u64 = read(&dir.join("memory.current"))?.trim().parse().ok()?;
        Some(max.saturating_sub(used))
    });
    match (system, cgroup) {
        (Some(s), Some(c)) => Some(s.min(c)),
        (s, c) => s.or(c),
    }
}

/// This process's peak resident set size (`VmHWM`).
#[must_use]
pub fn peak_rss() -> Option<u64> {
    read(Path::new("/proc/self/status")).and_then(|t| kib_field(&t, "VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse_to_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(1_024_000));
        assert_eq!(kib_field(text, "VmHWM:"), None);
        assert!(peak_rss().is_some_and(|b| b > 0));
        assert!(available().is_some_and(|b| b > 0));
    }
}
