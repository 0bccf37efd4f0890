//! `benches/RESULTS.md`: the pipeline bench writes the head of the file,
//! every other bench its own section between `<!-- NAME -->` markers, and
//! each keeps what the others wrote.

use std::path::{Path, PathBuf};

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

/// The date, in UTC.
pub fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The CPU model and core count.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{cpu}, {} cores", std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Replace the file's head (everything before the first section).
#[allow(dead_code, reason = "only the pipeline bench writes the head")]
pub fn write_head(head: &str) {
    let old = std::fs::read_to_string(path()).unwrap_or_default();
    let sections = old.find("<!-- ").map_or("", |s| &old[s..]);
    std::fs::write(path(), format!("{}\n\n{sections}", head.trim_end())).expect("write RESULTS.md");
    eprintln!("wrote {}", path().display());
}

/// Replace section `name` (or append it).
#[allow(dead_code, reason = "the pipeline bench writes the head instead")]
pub fn write_section(name: &str, body: &str) {
    let (start, end) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let old = std::fs::read_to_string(path()).unwrap_or_else(|_| "# Benchmark results\n".into());
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let text = match (old.find(&start), old.find(&end)) {
        (Some(s), Some(e)) => format!("{}{section}{}", &old[..s], &old[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(path(), text).expect("write RESULTS.md");
    eprintln!("wrote {}", path().display());
}
