//! Error plumbing every layer shares: the boxed source type adapters keep,
//! and the one-line report of an error chain for logs. A leaf module, so
//! the broker, the adapters and the HTTP edge can all use it without any
//! of them depending on another.
//!
//! Must not: depend on any other module of the crate.

/// A boxed error source, as adapters keep them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and all its sources on one line: `outer: inner: root`. A source
/// whose text the outer message already ends with is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = one_line(&error.to_string());
    let mut source = error.source();
    while let Some(e) = source {
        let text = one_line(&e.to_string());
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// A message that spans lines (the AWS SDK lists each credential provider
/// it tried on a line of its own) as one: its lines trimmed and joined.
fn one_line(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_message_of_several_lines_is_put_on_one() {
        let e = Outer(std::io::Error::other(
            "no credentials. Attempted:\n  Environment: not set\n  Profile: none\r\n",
        ));
        assert_eq!(
            chain(&e),
            "outer: no credentials. Attempted: Environment: not set; Profile: none"
        );
    }

    #[test]
    fn every_source_once_on_one_line() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(chain(&e), "outer: root cause");
    }
}
