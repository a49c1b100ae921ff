//! Request ids: the client's `x-request-id` when it is a short token
//! that does not look like one of ours, else a new one from a per-process
//! prefix and a counter.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::HeaderValue;

use super::REQUEST_ID;

/// Request ids: a random per-process prefix and a counter. Unique within
/// the process and across restarts, and far cheaper than a UUID per request.
pub(super) struct RequestIds {
    prefix: [u8; 12],
    next: AtomicU64,
}

impl RequestIds {
    /// The process's one source of ids, shared by its listeners: one
    /// prefix per process, as the README says.
    pub(super) fn process() -> &'static Self {
        static IDS: std::sync::OnceLock<RequestIds> = std::sync::OnceLock::new();
        IDS.get_or_init(Self::new)
    }

    pub(super) fn new() -> Self {
        let mut prefix = [0u8; 12];
        prefix.copy_from_slice(&uuid::Uuid::new_v4().simple().to_string().as_bytes()[..12]);
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    /// The request's id: the client's `x-request-id` when it is a short
    /// token (it goes into logs and the audit trail) not of the form rkms
    /// generates, else a new one. So a line whose id has our form was
    /// logged for the request rkms gave that id, never for a client that
    /// copied it.
    pub(super) fn assign(&self, request: &Request) -> HeaderValue {
        match request.headers().get(REQUEST_ID).filter(|v| usable(v)) {
            Some(theirs) => theirs.clone(),
            None => self.make(),
        }
    }

    fn make(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 25];
        id[..12].copy_from_slice(&self.prefix);
        id[12] = b'-';
        for (i, slot) in id[13..].iter_mut().enumerate() {
            *slot = HEX[((n >> (4 * (11 - i))) & 0xf) as usize];
        }
        // Hex digits and '-' are always a valid header value.
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

fn usable(value: &HeaderValue) -> bool {
    (1..=128).contains(&value.len())
        && value
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !generated(value.as_bytes())
}

/// Whether an id has the form `make` gives: 12 lower-case hex digits, `-`,
/// 12 more.
fn generated(id: &[u8]) -> bool {
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    id.len() == 25 && id[12] == b'-' && hex(&id[..12]) && hex(&id[13..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_hex_tokens_of_one_process() {
        let ids = RequestIds::new();
        let a = ids.make();
        let b = ids.make();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 25);
            assert!(generated(id.as_bytes()));
            assert_eq!(&s[..13], &a.to_str().unwrap()[..13], "one prefix");
        }
        assert!(a.to_str().unwrap().ends_with("-000000000001"));
        assert!(b.to_str().unwrap().ends_with("-000000000002"));
    }

    #[test]
    fn only_short_token_request_ids_are_kept() {
        assert!(usable(&HeaderValue::from_static("req-1:a.b_c")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_static("quote\"")));
        assert!(!usable(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
    }

    #[test]
    fn a_client_cannot_pass_off_its_request_as_one_of_ours() {
        let ours = RequestIds::new().make();
        assert!(!usable(&ours), "one of ours, copied back");
        assert!(!usable(&HeaderValue::from_static(
            "04af7efb1a50-000000000001"
        )));
        // Near misses are the client's own ids and are kept.
        for theirs in [
            "04af7efb1a50-00000000001",   // one digit short
            "04af7efb1a50-0000000000012", // one digit more
            "04AF7EFB1A50-000000000001",  // upper case
            "04af7efb1a50_000000000001",  // not a '-'
            "04af7efb1a5g-000000000001",  // not hex
        ] {
            assert!(usable(&HeaderValue::from_static(theirs)), "{theirs}");
        }
    }
}
