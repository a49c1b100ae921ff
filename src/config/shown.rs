//! Text an operator reads that someone else may have chosen (an id in a
//! log line, a key or value in a config error): what would split its line
//! or change how it displays is escaped.

use std::borrow::Cow;

/// Characters JSON allows raw that split a log line for some readers
/// (line and paragraph separators: JavaScript, Python's `splitlines`) or
/// make it display other than it reads (bidirectional controls). A client
/// chooses the ids log lines carry.
pub fn breaks_a_line(c: char) -> bool {
    matches!(
        c,
        '\u{2028}'
            | '\u{2029}'
            | '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// `text` with control characters (a newline, ESC, BEL) and the
/// characters [`breaks_a_line`] names escaped (`\n`, `\u{1b}`), so that it
/// stays on its line and cannot drive a terminal.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || breaks_a_line(c);
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}
