//! What the edge refuses before any work, on every route: a request over
//! the size limits (414, 431, 413) or without one clear Host (400).

use axum::extract::Request;
use axum::http::header;

use super::super::Limits;
use crate::error::ApiError;

/// No route reads a body; a declared one over this is refused.
const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// 400 for a request with more than one `Host` header, an HTTP/1.1
/// request with none, or one whose value is not a host and port (RFC
/// 9112, 3.2: which host was meant is unknown; `a, b` is how two Host
/// lines read once joined). The HTTP library passes all three through.
pub(super) fn bad_host(request: &Request) -> Option<ApiError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some(ApiError::BadRequest("more than one Host header".into())),
        (None, _) if request.version() == axum::http::Version::HTTP_11 => Some(
            ApiError::BadRequest("an HTTP/1.1 request needs a Host header".into()),
        ),
        (Some(host), None) if !host_and_port(host.as_bytes()) => Some(ApiError::BadRequest(
            "the Host header is not a host and port".into(),
        )),
        _ => None,
    }
}

/// Bytes of a registered name in a Host header: unreserved, `%` of
/// pct-encoded and sub-delims, but `,` (two Host lines joined read
/// `a, b`). A table: this runs over every request's Host.
const HOST_NAME: [bool; 256] = {
    let mut ok = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        ok[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
            );
        b += 1;
    }
    ok
};

/// `uri-host [ ":" port ]` (RFC 9110, 7.2): a registered name or an IP
/// literal in brackets, then a port of digits that fits 16 bits. Empty is
/// allowed (a request target without an authority). Scanned in place: it
/// runs on every request.
fn host_and_port(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host_ok, rest) = match value.split_first() {
        Some((b'[', inside)) => match inside.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &inside[..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                (ok, &inside[end + 1..])
            }
            None => (false, &[][..]),
        },
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            let name = &value[..end];
            let ok = !name.is_empty() && name.iter().all(|&b| HOST_NAME[usize::from(b)]);
            (ok, &value[end..])
        }
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', port)) => {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        Some(_) => false,
    };
    host_ok && port_ok
}

/// 414 for a request target over `server.max_uri_bytes`, 431 for headers
/// over `server.max_header_bytes`, 413 for a declared body over
/// [`BODY_LIMIT_BYTES`] (no route reads a body; a chunked one is never read).
pub(super) fn oversized(limits: &Limits, request: &Request) -> Option<ApiError> {
    // The whole target: an absolute-form one (`GET http://host/key?..`)
    // carries a scheme and an authority before the path.
    let uri = request.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes as usize {
        return Some(ApiError::UriTooLong(limits.max_uri_bytes));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes as usize {
        return Some(ApiError::HeadersTooLarge(limits.max_header_bytes));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT_BYTES as u64) {
        return Some(ApiError::PayloadTooLarge(BODY_LIMIT_BYTES));
    }
    None
}
