//! A TOML syntax error as an operator sees it: the file, line and column,
//! and the line itself with what may be a secret taken out.

use super::ConfigError;

/// TOML syntax errors, reported with the file, line and column, and the
/// offending line on lines of its own.
pub(super) fn check(file: &str, text: &str) -> Result<(), ConfigError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let start = e.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let source_line = text[line_start..].lines().next().unwrap_or("");
    let gutter = line.to_string();
    let message = e.message().trim_end().replace('\n', "; ");
    let message = super::shown::printable(&message);
    // A line of another kind of file (`--config` given an env file, or
    // /proc/self/environ) is not shown whole: it may hold anything.
    let (shown, redacted) = if source_line.chars().count() > MAX_SHOWN_LINE {
        (
            format!("[not shown: {} bytes long]", source_line.len()),
            true,
        )
    } else if source_line.contains(|c: char| c.is_control() && c != '\t') {
        ("[not shown: it holds control characters]".to_string(), true)
    } else {
        shown_line(&text[..line_start], source_line)
    };
    let shown = super::shown::printable(&shown);
    // The caret points into the line as written; with a hash taken out it
    // would point elsewhere, so the line and column say where instead.
    let caret = if redacted {
        String::new()
    } else {
        format!("\n {} | {:>column$}", " ".repeat(gutter.len()), "^")
    };
    // Not through `ConfigError::new`: the line and its caret go on lines
    // of their own, each part already escaped.
    Err(ConfigError {
        key: super::shown::printable(&format!("{file}:{line}:{column}")).into_owned(),
        problem: format!("TOML syntax error: {message}\n {gutter} | {shown}{caret}"),
    })
}

/// The longest line a syntax error shows, in characters.
const MAX_SHOWN_LINE: usize = 200;

/// The line a syntax error shows, and whether anything was taken out of
/// it. Its value is taken out where it may be a secret: any line of an
/// `[auth…]` table (or a key under `auth.`), a key naming a token, and a
/// line that is no `key = value` at all (a token pasted on a line of its
/// own). Elsewhere, long runs of hex digits are (see [`without_hashes`]).
/// `before`: the text before the line, for the table it is in.
fn shown_line(before: &str, line: &str) -> (String, bool) {
    let table = before
        .lines()
        .rev()
        .map(str::trim_start)
        .find(|l| l.starts_with('['))
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_start();
    let bare = line.trim();
    let (key, value) = match line.split_once('=') {
        Some((key, _)) => (key.trim_end(), true),
        None => ("", false),
    };
    let named = key.trim_start().to_ascii_lowercase();
    let secret = table.starts_with("auth")
        || named.starts_with("auth")
        || [
            "token",
            "secret",
            "password",
            "passwd",
            "credential",
            "private",
        ]
        .iter()
        .any(|word| named.contains(word))
        || (!value && !bare.is_empty() && !bare.starts_with(['[', '#']));
    match (secret, value) {
        (false, _) => without_hashes(line),
        (true, true) => (format!("{key} = [REDACTED]"), true),
        (true, false) => ("[REDACTED]".into(), true),
    }
}

/// `line` with each run of 16 or more hex digits replaced (a
/// `token_sha256`, which is close to a secret, or the pieces of one that a
/// typo split), and whether any was.
fn without_hashes(line: &str) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut run = String::new();
    let mut redacted = false;
    let mut flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push_str("[REDACTED]");
            redacted = true;
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in line.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    (out, redacted)
}
