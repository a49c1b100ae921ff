//! `GET /key?id=ID[&create=false]` (and the RKMS path `/api/v1/key`).
//!
//! Must not: call KMS or the store (the broker does), or log key material.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use zeroize::Zeroizing;

use super::AppState;
use crate::auth::{PeerNames, Remembered};
use crate::broker::{BrokerError, Resolved, Unanswered, Unwaited};
use crate::domain::{DataKey, KeyId};
use crate::error::ApiError;
use crate::metrics::{Refusal, Shed};
use crate::telemetry::audit;

/// Query parameters, parsed strictly: unknown names, repeats and unknown
/// values are 400s rather than silently ignored.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyQuery {
    pub id: KeyId,
    pub create: bool,
}

/// Parse the raw query string of `/key` (public for the fuzz targets).
pub fn parse_query(raw: Option<&str>) -> Result<KeyQuery, ApiError> {
    let mut id = None;
    let mut create = None;
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)?;
        let value = decode_component(value)?;
        let slot = match &*name {
            "id" => &mut id,
            "create" => &mut create,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {:?}; allowed: id, create",
                    truncate(other)
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::BadRequest(format!(
                "parameter {name:?} given more than once"
            )));
        }
    }
    let id = id.ok_or_else(|| ApiError::BadRequest("missing required parameter \"id\"".into()))?;
    let id = KeyId::parse(&id).map_err(|e| ApiError::BadRequest(format!("invalid id: {e}")))?;
    let create = match create.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "invalid value {:?} for \"create\"; use true or false",
                truncate(other)
            )))
        }
    };
    Ok(KeyQuery { id, create })
}

/// Decode one form-encoded query component strictly: `+` is a space, `%XX`
/// a byte, and the bytes must be UTF-8. A lenient decoder would turn
/// `x%FF` and `x%FE` into the same U+FFFD id, so two ids would share a key.
/// A component with nothing to decode is borrowed as it is.
fn decode_component(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    let escape = |b: &u8| *b == b'+' || *b == b'%';
    let mut rest = raw.as_bytes();
    let Some(mut at) = rest.iter().position(escape) else {
        return Ok(Cow::Borrowed(raw));
    };
    let bad = |why: &str| ApiError::BadRequest(format!("query string is not valid: {why}"));
    // A hex digit's value: `to_digit` takes only 0-9, a-f and A-F.
    let hex = |b: &u8| char::from(*b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    // The bytes between escapes are copied a run at a time.
    loop {
        out.extend_from_slice(&rest[..at]);
        if rest[at] == b'+' {
            out.push(b' ');
            rest = &rest[at + 1..];
        } else {
            // Two hex digits exactly, no sign (`%+5`).
            let byte = match rest.get(at + 1..at + 3) {
                Some([high, low]) => hex(high).zip(hex(low)).map(|(h, l)| (h << 4 | l) as u8),
                _ => None,
            }
            .ok_or_else(|| bad("'%' must be followed by two hex digits"))?;
            out.push(byte);
            rest = &rest[at + 3..];
        }
        match rest.iter().position(escape) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(rest);
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| bad("percent-decoded bytes are not UTF-8"))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

struct Audit<'a> {
    request_id: &'a str,
    client: &'a str,
    key_id: &'a str,
}

impl Audit<'_> {
    /// One line per key decision in the audit trail. Never key material.
    fn emit(&self, action: &str, source: &str, outcome: &str) {
        audit::record(&audit::Event {
            request_id: self.request_id,
            client: self.client,
            key_id: self.key_id,
            action,
            source,
            outcome,
        });
    }

    /// The line for a resolution this request stopped waiting for, written
    /// when it ends: `client_gone` when the client hung up first (the only
    /// line for the request, whatever the resolution did), `after_timeout`
    /// when a key was read or created after the request was answered 503
    /// (a failure then changes nothing the first line did not say), and
    /// `cut_off` when the process stopped before it ended.
    fn unanswered(&self) -> Unanswered {
        let (request_id, client, key_id) = (
            self.request_id.to_owned(),
            self.client.to_owned(),
            self.key_id.to_owned(),
        );
        Box::new(move |result, action, why| {
            let audit = Audit {
                request_id: &request_id,
                client: &client,
                key_id: &key_id,
            };
            let (action, source) = match result {
                Ok(r) => (if r.created { "create" } else { "read" }, r.source.as_str()),
                Err(_) => (action.as_str(), "none"),
            };
            match (why, result) {
                (_, Err(BrokerError::CutOff)) => audit.emit(action, source, "cut_off"),
                (Unwaited::Gone, _) => audit.emit(action, source, "client_gone"),
                (Unwaited::TimedOut, Ok(_)) => audit.emit(action, source, "after_timeout"),
                (Unwaited::TimedOut, Err(_)) => {}
            }
        })
    }
}

/// The 200 body, `{"id":…,"key":…}`, in a buffer that is wiped when hyper
/// has sent it and drops it. Copies rkms cannot wipe: hyper may copy a
/// small body into its write buffer, and the kernel's socket buffers hold
/// it until sent.
fn key_response(id: &str, key: &DataKey) -> Response {
    use base64::Engine;
    let encoded_len = key.len().div_ceil(3) * 4;
    let mut body = Zeroizing::new(Vec::with_capacity(id.len() + encoded_len + 24));
    body.extend_from_slice(b"{\"id\":");
    crate::telemetry::audit::json_string(&mut body, id);
    body.extend_from_slice(b",\"key\":\"");
    // Room for the rest first: a reallocation after the key is written
    // would free a copy of it unwiped.
    body.reserve(encoded_len + 2);
    let start = body.len();
    body.resize(start + encoded_len, 0);
    if base64::engine::general_purpose::STANDARD
        .encode_slice(key.expose(), &mut body[start..])
        .is_err()
    {
        tracing::error!("cannot encode the key response: base64 buffer too small");
        return ApiError::Internal(None).into_response();
    }
    body.extend_from_slice(b"\"}");
    let mut response = Response::new(Body::from(Bytes::from_owner(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Takes the request whole: the headers, query and peer names are read in
/// place (a `HeaderMap` extractor would copy every header per request).
pub(super) async fn get_key(
    state: &AppState,
    request: Request,
    request_id: &str,
    remembered: &Remembered,
    permit: Option<OwnedSemaphorePermit>,
) -> Response {
    let headers = request.headers();
    // Who asks comes first: an unauthenticated caller learns nothing, not
    // even what is wrong with its query.
    let query = parse_query(request.uri().query());
    let peer = request.extensions().get::<PeerNames>();
    let identity = match state.auth.authenticate_on(headers, peer, Some(remembered)) {
        Ok(who) => who,
        Err(failure) => {
            Audit {
                request_id,
                client: "unauthenticated",
                key_id: query.as_ref().map_or("", |q| q.id.as_str()),
            }
            .emit("denied", "none", failure.reason());
            return state.refuse(failure);
        }
    };
    let query = match query {
        Ok(q) => q,
        Err(e) => {
            // Refused before any id was read: no key_id.
            Audit {
                request_id,
                client: identity.name(),
                key_id: "",
            }
            .emit("denied", "none", e.error_type());
            return e.into_response();
        }
    };
    let audit = Audit {
        request_id,
        client: identity.name(),
        key_id: query.id.as_str(),
    };
    if let Err(wait) = identity.check_rate() {
        audit.emit("denied", "none", "rate_limited");
        state.metrics.shed(Shed::RateLimit);
        return ApiError::TooManyRequests { retry_after: wait }.into_response();
    }
    // Whether the id exists is never revealed to a client that may not read it.
    if !identity.may_read(&query.id) {
        audit.emit("denied", "none", "forbidden");
        state.metrics.refused(Refusal::Forbidden);
        return ApiError::Forbidden("this client may not use this id".into()).into_response();
    }
    let may_create = query.create && identity.may_create();
    let (result, action) = state
        .broker
        .get_or_create_within(&query.id, may_create, Some(state.request_timeout), || {
            // The request's permit goes with the decision when the client
            // stops waiting (hung up, timed out): a decision still running
            // counts against `server.max_concurrent_requests` until it
            // ends, so clients that hang up cannot start unbounded work.
            let hook = audit.unanswered();
            Some(Box::new(move |result, action, why| {
                let _permit = permit;
                hook(result, action, why);
            }))
        })
        .await;
    match result {
        Ok(Resolved {
            key,
            source,
            created,
        }) => {
            audit.emit(
                if created { "create" } else { "read" },
                source.as_str(),
                "ok",
            );
            key_response(query.id.as_str(), &key)
        }
        // A client that may read but not create asked for an absent id
        // without create=false: it asked to create.
        Err(BrokerError::NotFound) if query.create => {
            audit.emit("create", "none", "forbidden");
            state.metrics.refused(Refusal::CreateDenied);
            ApiError::Forbidden("this client may not create new ids".into()).into_response()
        }
        Err(BrokerError::NotFound) => {
            audit.emit("read", "none", "not_found");
            ApiError::NotFound("no key exists for this id".into()).into_response()
        }
        Err(e) => {
            let e = ApiError::from(e);
            audit.emit(action.as_str(), "none", e.error_type());
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests;
