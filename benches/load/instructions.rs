//! Instructions per request, counted by callgrind: the user-space work of
//! a server per warm read, the same from run to run whatever else the
//! machine is doing (timed figures here move by 10–20% between runs). It
//! counts no kernel work (socket reads and writes, about two thirds of a
//! warm read's CPU time), so it prices what our own code adds, not the
//! whole request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one counted run gave.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    pub requests: u64,
    /// Instructions per request, every thread of the process.
    pub per_request: f64,
    /// Each function's own instructions per request (not its callees').
    pub functions: HashMap<String, f64>,
}

/// Whether valgrind's callgrind and its tools are installed.
pub fn available() -> bool {
    // callgrind_annotate prints its version on stderr, then exits 255.
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| [o.stdout, o.stderr].concat().windows(2).any(|w| w == b"3."))
    };
    runs("valgrind") && runs("callgrind_control") && runs("callgrind_annotate")
}

/// The arguments that run a program under callgrind, writing to `out`.
pub fn wrapper(out: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "-q".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// Zero the counters of the callgrind process `pid`, run `load` (which
/// returns the requests it made), dump the counters and read them.
pub fn count(pid: u32, out: &Path, load: impl FnOnce() -> u64) -> Counted {
    control(pid, "-z");
    let requests = load();
    control(pid, "-d");
    // The dump is `out.N`, N counting from 1; take the newest.
    let dir = out.parent().unwrap();
    let stem = out.file_name().unwrap().to_string_lossy().into_owned();
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.")))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("callgrind wrote a dump");
    read_dump(&newest, requests)
}

fn control(pid: u32, what: &str) {
    let status = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .output()
        .expect("callgrind_control runs");
    assert!(
        status.status.success(),
        "callgrind_control {what} {pid} failed"
    );
}

fn read_dump(path: &PathBuf, requests: u64) -> Counted {
    let out = Command::new("callgrind_annotate")
        .args([
            "--threshold=100",
            "--inclusive=no",
            "--auto=no",
            "--tree=none",
        ])
        .arg(path)
        .output()
        .expect("callgrind_annotate runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let per = |n: u64| n as f64 / requests.max(1) as f64;
    let mut counted = Counted {
        requests,
        ..Counted::default()
    };
    for line in text.lines() {
        let Some((count, rest)) = split_count(line) else {
            continue;
        };
        if rest.contains("PROGRAM TOTALS") {
            counted.per_request = per(count);
        } else if let Some(name) = function_name(rest) {
            *counted.functions.entry(name).or_default() += per(count);
        }
    }
    assert!(counted.per_request > 0.0, "no totals in {}", path.display());
    counted
}

/// `"  1,234 (12.3%)  rest"` into 1234 and `rest`.
fn split_count(line: &str) -> Option<(u64, &str)> {
    let line = line.trim_start();
    let (number, rest) = line.split_once(' ')?;
    let count = number.replace(',', "").parse().ok()?;
    let rest = rest.trim_start().strip_prefix('(')?;
    let (_, rest) = rest.split_once(')')?;
    Some((count, rest.trim()))
}

/// `file:function [object]` into `function`: the first `:` not part of
/// a `::` ends the file.
fn function_name(rest: &str) -> Option<String> {
    let bytes = rest.as_bytes();
    let colon = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
    })?;
    let function = &rest[colon + 1..];
    let function = match function.rfind(" [") {
        Some(at) if function.ends_with(']') => &function[..at],
        _ => function,
    };
    Some(function.trim().to_owned())
}

/// The functions that cost `a` the most instructions per request more
/// than `b`, largest first.
pub fn most_added(a: &Counted, b: &Counted, n: usize) -> Vec<(String, f64, f64)> {
    let mut rows: Vec<(String, f64, f64)> = a
        .functions
        .iter()
        .map(|(name, &ours)| {
            let theirs = b.functions.get(name).copied().unwrap_or(0.0);
            (name.clone(), ours, theirs)
        })
        // The thread entry points and the runtime's loop were on the
        // stack when the counters were dumped, and show what ran below
        // them: no single function of a request costs half of it.
        .filter(|(_, ours, theirs)| ours > theirs && *ours < a.per_request / 2.0)
        .collect();
    rows.sort_by(|x, y| (y.1 - y.2).total_cmp(&(x.1 - x.2)));
    rows.truncate(n);
    rows
}
