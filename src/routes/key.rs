//! `GET /key?id=ID[&create=false]` (and the RKMS path `/api/v1/key`).

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{AppState, REQUEST_ID};
use crate::broker::Resolved;
use crate::domain::KeyId;
use crate::error::ApiError;

/// Query parameters, parsed strictly: unknown names, repeats and unknown
/// values are 400s rather than silently ignored.
#[derive(Debug, PartialEq, Eq)]
struct KeyQuery {
    id: KeyId,
    create: bool,
}

fn parse_query(raw: Option<&str>) -> Result<KeyQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|_| ApiError::BadRequest("query string is not valid URL encoding".into()))?;
    let mut id = None;
    let mut create = None;
    for (name, value) in pairs {
        let slot = match name.as_str() {
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

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[derive(serde::Serialize)]
struct KeyBody<'a> {
    id: &'a str,
    key: &'a str,
}

struct Audit<'a> {
    request_id: &'a str,
    client: &'a str,
    key_id: &'a str,
}

impl Audit<'_> {
    /// One event per key decision on the `audit` target. Never key material.
    /// The subscriber stamps the time (`timestamp` in JSON).
    fn emit(&self, action: &str, source: &str, outcome: &str) {
        tracing::info!(
            target: "audit",
            request_id = self.request_id,
            client = self.client,
            key_id = self.key_id,
            action,
            source,
            outcome,
            "key decision"
        );
    }
}

pub async fn get_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let query = match parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let identity = match state.auth.authenticate(&headers) {
        Ok(who) => who,
        Err(e) => {
            Audit {
                request_id,
                client: "unauthenticated",
                key_id: query.id.as_str(),
            }
            .emit("denied", "none", "unauthenticated");
            return e.into_response();
        }
    };
    let audit = Audit {
        request_id,
        client: identity.name(),
        key_id: query.id.as_str(),
    };
    if !identity.may_use(&query.id) {
        audit.emit("denied", "none", "forbidden");
        return ApiError::Forbidden("this client may not use this id".into()).into_response();
    }

    let lookup = state.broker.get_or_create(&query.id, query.create);
    let result = match tokio::time::timeout(state.request_timeout, lookup).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::ServiceUnavailable(None)),
    };
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
            let encoded = key.to_base64();
            let body = KeyBody {
                id: query.id.as_str(),
                key: &encoded,
            };
            let mut response = axum::Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(ApiError::NotFound(msg)) => {
            audit.emit("not_found", "none", "not_found");
            ApiError::NotFound(msg).into_response()
        }
        Err(e) => {
            let action = if query.create { "create" } else { "read" };
            audit.emit(action, "none", e.error_type());
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_is_strict() {
        let ok = parse_query(Some("id=a%2Fb&create=false")).unwrap();
        assert_eq!(ok.id.as_str(), "a/b");
        assert!(!ok.create);
        assert!(parse_query(Some("id=x")).unwrap().create);
        for bad in [
            None,
            Some(""),
            Some("id="),
            Some("id=a&id=b"),
            Some("id=a&create=maybe"),
            Some("id=a&foo=1"),
            Some("id=a%0Ab"),
        ] {
            assert!(
                matches!(parse_query(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
