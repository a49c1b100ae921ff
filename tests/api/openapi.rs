//! `openapi.yaml` stays true: its paths are the router's routes, its error
//! types and statuses are `ApiError`'s, and what a real server answers (in
//! token mode, and with the store or every KMS region down) is a status the
//! document lists for that path, with the headers, content type and body it
//! describes. Schemathesis (`make api-check`) fuzzes the same document
//! against the binary; this test needs no Python.
//!
//! The crate has no YAML parser, so this file reads the subset of YAML the
//! document is written in (block mappings and lists, quoted and plain
//! scalars, `|` blocks, `[]`); anything else in it fails the test.

use std::collections::BTreeSet;
use std::path::Path;

use axum::response::IntoResponse;
use rkms::config::{AuthClient, AuthMode, IdPattern, Settings, StoreBackend};
use rkms::error::{ApiError, Challenge};
use rkms::kms::faulty::Fault;
use rkms::kms::KmsErrorKind;
use serde_json::Value;

use crate::helpers::*;

// ---------------------------------------------------------------------------
// The YAML subset.

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Scalar(String),
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Node::Map(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> &[Node] {
        match self {
            Node::List(items) => items,
            _ => &[],
        }
    }
}

struct Parser {
    lines: Vec<String>,
    pos: usize,
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn skippable(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// `key: rest` or `key:`; keys may be quoted. None for a plain scalar.
fn split_key(text: &str) -> Option<(String, String)> {
    let (key, after) = if let Some(q) = text.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let end = text[1..].find(q)? + 1;
        (text[1..end].to_string(), &text[end + 1..])
    } else {
        let at = text
            .find(": ")
            .or_else(|| text.ends_with(':').then_some(text.len() - 1))?;
        (text[..at].to_string(), &text[at..])
    };
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((key, rest.trim().to_string()))
}

fn scalar(text: &str, line: usize) -> Node {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return Node::Scalar(inner.replace("''", "'"));
    }
    if let Some(inner) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        assert!(
            !inner.contains('\\'),
            "line {line}: escapes in double quotes are not read here"
        );
        return Node::Scalar(inner.to_string());
    }
    match t {
        "[]" => Node::List(Vec::new()),
        "{}" => Node::Map(Vec::new()),
        _ => {
            assert!(
                !t.starts_with(['[', '{', '&', '*', '!', '%', '@', '`']),
                "line {line}: flow collections, anchors and tags are not read here: {t}"
            );
            assert!(
                !t.contains(" #"),
                "line {line}: no comments after a value: {t}"
            );
            Node::Scalar(t.to_string())
        }
    }
}

impl Parser {
    fn parse(src: &str) -> Node {
        assert!(!src.contains('\t'), "openapi.yaml: indent with spaces");
        let mut p = Parser {
            lines: src.lines().map(str::to_string).collect(),
            pos: 0,
        };
        let doc = p.map(0);
        if let Some((_, text)) = p.peek() {
            panic!("openapi.yaml line {}: not read: {text}", p.pos + 1);
        }
        doc
    }

    fn peek(&mut self) -> Option<(usize, String)> {
        while self.pos < self.lines.len() && skippable(&self.lines[self.pos]) {
            self.pos += 1;
        }
        let line = self.lines.get(self.pos)?;
        Some((indent_of(line), line.trim_start().to_string()))
    }

    fn map(&mut self, indent: usize) -> Node {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some((at, text)) = self.peek() {
            if at < indent || text.starts_with("- ") {
                break;
            }
            let line = self.pos + 1;
            assert_eq!(at, indent, "line {line}: unexpected indentation");
            let (key, rest) =
                split_key(&text).unwrap_or_else(|| panic!("line {line}: expected `key:`: {text}"));
            assert!(
                entries.iter().all(|(k, _)| *k != key),
                "line {line}: duplicate key {key}"
            );
            self.pos += 1;
            let value = self.value(indent, &rest, line);
            entries.push((key, value));
        }
        Node::Map(entries)
    }

    fn list(&mut self, indent: usize) -> Node {
        let mut items = Vec::new();
        while let Some((at, text)) = self.peek() {
            if at != indent || !text.starts_with("- ") {
                break;
            }
            let line = self.pos + 1;
            let rest = text[2..].trim_start();
            let inner = indent + (text.len() - rest.len());
            if split_key(rest).is_some() {
                // A mapping that starts on the dash's line.
                self.lines[self.pos] = format!("{}{rest}", " ".repeat(inner));
                items.push(self.map(inner));
            } else {
                self.pos += 1;
                items.push(scalar(rest, line));
            }
        }
        Node::List(items)
    }

    fn value(&mut self, indent: usize, rest: &str, line: usize) -> Node {
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut text = Vec::new();
            let mut block_indent = None;
            while self.pos < self.lines.len() {
                let raw = &self.lines[self.pos];
                if raw.trim().is_empty() {
                    text.push(String::new());
                } else if indent_of(raw) > indent {
                    let bi = *block_indent.get_or_insert(indent_of(raw));
                    text.push(raw.get(bi..).unwrap_or("").to_string());
                } else {
                    break;
                }
                self.pos += 1;
            }
            return Node::Scalar(text.join("\n").trim_end().to_string());
        }
        if !rest.is_empty() {
            return scalar(rest, line);
        }
        match self.peek() {
            Some((at, text)) if at > indent || (at == indent && text.starts_with("- ")) => {
                if text.starts_with("- ") {
                    self.list(at)
                } else {
                    self.map(at)
                }
            }
            _ => Node::Scalar(String::new()),
        }
    }
}

// ---------------------------------------------------------------------------
// The document.

struct Spec {
    doc: Node,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Spec {
    fn load() -> Self {
        let text = std::fs::read_to_string(root().join("openapi.yaml")).unwrap();
        Self {
            doc: Parser::parse(&text),
        }
    }

    fn at(&self, path: &[&str]) -> &Node {
        let mut node = &self.doc;
        for (i, key) in path.iter().enumerate() {
            node = self
                .deref(node)
                .get(key)
                .unwrap_or_else(|| panic!("openapi.yaml has no {}", path[..=i].join(".")));
        }
        self.deref(node)
    }

    /// Follow `$ref` (local references only).
    fn deref<'a>(&'a self, mut node: &'a Node) -> &'a Node {
        for _ in 0..16 {
            let Some(target) = node.get("$ref").and_then(Node::str) else {
                return node;
            };
            let pointer = target
                .strip_prefix("#/")
                .unwrap_or_else(|| panic!("only local $refs: {target}"));
            let mut next = &self.doc;
            for part in pointer.split('/') {
                let part = part.replace("~1", "/").replace("~0", "~");
                next = next
                    .get(&part)
                    .unwrap_or_else(|| panic!("$ref {target} points nowhere"));
            }
            node = next;
        }
        panic!("$ref loop");
    }

    fn paths(&self) -> BTreeSet<String> {
        self.at(&["paths"])
            .keys()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The documented response for GET `path` and `status`.
    fn response(&self, path: &str, status: u16) -> Option<&Node> {
        let responses = self.at(&["paths", path, "get", "responses"]);
        responses.get(&status.to_string()).map(|r| self.deref(r))
    }

    fn statuses(&self, path: &str) -> BTreeSet<u16> {
        self.at(&["paths", path, "get", "responses"])
            .keys()
            .iter()
            .map(|s| s.parse().unwrap_or_else(|_| panic!("{path}: status {s}")))
            .collect()
    }

    /// Header names a response documents as required (lower case).
    fn required_headers(&self, response: &Node) -> Vec<String> {
        let Some(headers) = response.get("headers") else {
            return Vec::new();
        };
        headers
            .keys()
            .into_iter()
            .filter(|name| {
                let h = self.deref(headers.get(name).unwrap());
                h.get("required").and_then(Node::str) == Some("true")
            })
            .map(str::to_ascii_lowercase)
            .collect()
    }

    /// Check `value` against a JSON Schema of the document: the keywords it
    /// uses, except `pattern` and `propertyNames` (Schemathesis checks those).
    fn validate(&self, schema: &Node, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.deref(schema);
        for part in schema.get("allOf").map(Node::items).unwrap_or(&[]) {
            self.validate(part, value, at)?;
        }
        if let Some(t) = schema.get("type").and_then(Node::str) {
            let ok = match t {
                "object" => value.is_object(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                other => return Err(format!("{at}: type {other} is not checked here")),
            };
            if !ok {
                return Err(format!("{at}: {value} is not of type {t}"));
            }
        }
        if let Some(c) = schema.get("const").and_then(Node::str) {
            if value.as_str() != Some(c) {
                return Err(format!("{at}: {value} is not {c:?}"));
            }
        }
        if let Some(values) = schema.get("enum") {
            let allowed: Vec<&str> = values.items().iter().filter_map(Node::str).collect();
            if !value.as_str().is_some_and(|v| allowed.contains(&v)) {
                return Err(format!("{at}: {value} is not one of {allowed:?}"));
            }
        }
        if let Some(s) = value.as_str() {
            let chars = s.chars().count();
            if let Some(min) = schema.get("minLength").and_then(Node::str) {
                if chars < min.parse().unwrap() {
                    return Err(format!("{at}: {s:?} is shorter than {min}"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Node::str) {
                if chars > max.parse().unwrap() {
                    return Err(format!("{at}: {s:?} is longer than {max}"));
                }
            }
            if schema.get("contentEncoding").and_then(Node::str) == Some("base64") {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("{at}: {s:?} is not base64: {e}"))?;
            }
        }
        if let Value::Object(object) = value {
            for name in schema.get("required").map(Node::items).unwrap_or(&[]) {
                let name = name.str().unwrap();
                if !object.contains_key(name) {
                    return Err(format!("{at}: {name} is missing"));
                }
            }
            let properties = schema.get("properties");
            for (name, v) in object {
                let here = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(s) => self.validate(s, v, &here)?,
                    None => match schema.get("additionalProperties") {
                        Some(Node::Scalar(f)) if f == "false" => {
                            return Err(format!("{here}: not in the document"));
                        }
                        Some(s @ Node::Map(_)) => self.validate(s, v, &here)?,
                        _ => {}
                    },
                }
            }
        }
        Ok(())
    }

    /// A response's header by name, any case.
    fn header<'a>(&'a self, response: &'a Node, name: &str) -> Option<&'a Node> {
        let headers = response.get("headers")?;
        let key = headers
            .keys()
            .into_iter()
            .find(|k| k.eq_ignore_ascii_case(name))?;
        headers.get(key).map(|h| self.deref(h))
    }

    fn error_types(&self) -> BTreeSet<String> {
        self.at(&["components", "schemas", "ErrorType", "enum"])
            .items()
            .iter()
            .map(|n| n.str().unwrap().to_string())
            .collect()
    }
}

/// The `.route("...")` paths of a source file.
fn routes_in(file: &str) -> BTreeSet<String> {
    // The arms of `Route::of`: `"/path" => Self::Variant,`.
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let start = text.find("fn of(path: &str)").expect("Route::of");
    let body = &text[start..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().split_once("\" => Self::"))
        .map(|(path, _)| path.trim_start_matches('"').to_string())
        .collect()
}

/// The string literals the arms of `fn NAME` in src/error.rs return.
fn arms_of(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("src/error.rs")).unwrap();
    let start = text
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("src/error.rs has no fn {name}"));
    let body = &text[start..];
    let body = &body[..body.find("\n    }\n").unwrap()];
    body.lines()
        .filter_map(|l| {
            l.split_once("=> ")
                .map(|(_, r)| r.trim().trim_end_matches(','))
        })
        .map(|r| r.trim_matches('"').to_string())
        .collect()
}

/// One of each `ApiError` variant.
fn every_api_error() -> Vec<ApiError> {
    vec![
        ApiError::BadRequest("b".into()),
        ApiError::Unauthorized("u".into(), Challenge::Bearer),
        ApiError::Forbidden("f".into()),
        ApiError::NotFound("n".into()),
        ApiError::MethodNotAllowed,
        ApiError::PayloadTooLarge(16384),
        ApiError::TooManyRequests {
            retry_after: std::time::Duration::from_millis(1500),
        },
        ApiError::UriTooLong(8192),
        ApiError::HeadersTooLarge(16384),
        ApiError::unavailable(),
        ApiError::Internal(None),
    ]
}

const KEY_PATHS: [&str; 2] = ["/key", "/api/v1/key"];

// ---------------------------------------------------------------------------
// The document against the code.

#[test]
fn every_route_is_documented_and_every_documented_path_is_a_route() {
    let spec = Spec::load();
    assert_eq!(spec.at(&["openapi"]).str(), Some("3.1.0"));
    let routes = routes_in("src/routes/edge.rs");
    assert!(routes.contains("/key"), "read the routes: {routes:?}");
    assert_eq!(
        spec.paths(),
        routes,
        "openapi.yaml paths vs the routes in src/routes/edge.rs"
    );
    for path in &routes {
        let item = spec.at(&["paths", path]);
        let methods: Vec<&str> = item
            .keys()
            .into_iter()
            .filter(|k| METHODS.contains(k))
            .collect();
        assert_eq!(methods, ["get"], "{path}: every route is GET only");
        for key in item.keys() {
            assert!(
                METHODS.contains(&key)
                    || ["summary", "description", "parameters", "servers"].contains(&key),
                "{path}: unexpected {key}"
            );
        }
    }
}

#[test]
fn every_reference_resolves_and_every_response_has_a_request_id() {
    let spec = Spec::load();
    fn walk<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
        match node {
            Node::Map(entries) => {
                for (k, v) in entries {
                    if k == "$ref" {
                        out.push(v.str().unwrap());
                    }
                    walk(v, out);
                }
            }
            Node::List(items) => items.iter().for_each(|i| walk(i, out)),
            Node::Scalar(_) => {}
        }
    }
    let mut refs = Vec::new();
    walk(&spec.doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        spec.deref(&Node::Map(vec![("$ref".into(), Node::Scalar(r.into()))]));
    }
    for path in spec.paths() {
        for status in spec.statuses(&path) {
            let response = spec.response(&path, status).unwrap();
            assert!(
                response.get("description").is_some(),
                "{path} {status}: no description"
            );
            assert!(
                spec.required_headers(response)
                    .contains(&"x-request-id".to_string()),
                "{path} {status}: x-request-id is on every response"
            );
        }
    }
}

#[test]
fn security_is_bearer_or_mutual_tls_except_on_the_probes() {
    let spec = Spec::load();
    let schemes = spec.at(&["components", "securitySchemes"]);
    assert_eq!(
        spec.deref(schemes.get("bearerAuth").unwrap())
            .get("scheme")
            .and_then(Node::str),
        Some("bearer")
    );
    assert_eq!(
        spec.deref(schemes.get("mutualTLS").unwrap())
            .get("type")
            .and_then(Node::str),
        Some("mutualTLS")
    );
    let global: Vec<Vec<&str>> = spec
        .at(&["security"])
        .items()
        .iter()
        .map(Node::keys)
        .collect();
    assert_eq!(global, [["bearerAuth"], ["mutualTLS"]]);
    for path in spec.paths() {
        let security = spec.at(&["paths", &path, "get"]).get("security");
        let open = security == Some(&Node::List(Vec::new()));
        let probe = path == "/healthz" || path == "/readyz";
        assert_eq!(open, probe, "{path}: only the probes are open");
        assert_eq!(
            spec.statuses(&path).contains(&401),
            !probe,
            "{path}: 401 iff credentials are needed"
        );
    }
}

#[tokio::test]
async fn every_api_error_is_documented_as_it_is_sent() {
    let spec = Spec::load();
    let variants = every_api_error();
    // A new ApiError variant must be added to every_api_error() and to the
    // document: the match arms in src/error.rs are counted.
    assert_eq!(
        arms_of("error_type").len(),
        variants.len(),
        "src/error.rs has a new ApiError variant: add it to every_api_error() and openapi.yaml"
    );
    let types: BTreeSet<String> = variants
        .iter()
        .map(|e| e.error_type().to_string())
        .collect();
    assert_eq!(types.len(), variants.len(), "one error_type per variant");
    assert_eq!(
        types,
        arms_of("error_type").into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(
        spec.error_types(),
        types,
        "ErrorType enum vs ApiError::error_type"
    );
    // mtls mode's 401 differs in its challenge only.
    let mut variants = variants;
    variants.push(ApiError::Unauthorized(
        "u".into(),
        Challenge::ClientCertificate,
    ));
    for error in variants {
        let status = error.status().as_u16();
        let error_type = error.error_type();
        let response = error.into_response();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_type"], error_type);
        for path in KEY_PATHS {
            let documented = spec
                .response(path, status)
                .unwrap_or_else(|| panic!("{path}: {status} ({error_type}) is not documented"));
            let schema = documented
                .get("content")
                .and_then(|c| c.get("application/json"))
                .and_then(|c| c.get("schema"))
                .unwrap_or_else(|| panic!("{path} {status}: no application/json schema"));
            spec.validate(schema, &body, &format!("{path} {status}"))
                .unwrap();
            // The narrowing is exact: no other error_type passes.
            let other = serde_json::json!({"error_type": "NotAnErrorType", "error_message": ""});
            assert!(spec.validate(schema, &other, "").is_err());
            // And every header with meaning that it sends is documented.
            for name in ["retry-after", "www-authenticate", "allow", "cache-control"] {
                if headers.contains_key(name) {
                    assert!(
                        spec.header(documented, name).is_some(),
                        "{path} {status}: {name} is sent but not documented"
                    );
                }
            }
            for name in spec.required_headers(documented) {
                if name == "x-request-id" {
                    continue; // added by the router's layers
                }
                let sent = headers.get(&name).unwrap_or_else(|| {
                    panic!("{error_type}: documented header {name} is not sent")
                });
                let header = spec.header(documented, &name).unwrap();
                let schema = header.get("schema").unwrap();
                if schema.get("type").and_then(Node::str) == Some("string") {
                    let sent = Value::String(sent.to_str().unwrap().into());
                    spec.validate(schema, &sent, &format!("{error_type}: {name}"))
                        .unwrap();
                }
                if schema.get("type").and_then(Node::str) == Some("integer") {
                    let n: u64 = sent.to_str().unwrap().parse().unwrap();
                    assert!(n >= 1, "{error_type}: {name} = {n}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The document against a running server.

const WRITER: &str = "openapi-writer-token-0123456789";
const READER: &str = "openapi-reader-token-0123456789";

fn client(name: &str, token: &str, ids: &[&str], create: bool, rps: u32) -> AuthClient {
    let hash = rkms::auth::token_hash(token);
    AuthClient {
        name: name.into(),
        token_sha256: Some(hash),
        resolved: vec![hash],
        ids: ids.iter().map(|p| IdPattern::parse(p).unwrap()).collect(),
        create,
        requests_per_second: rps,
        burst: rps,
        ..AuthClient::default()
    }
}

fn token_mode(s: &mut Settings) {
    s.auth.mode = AuthMode::Token;
    s.auth.clients = vec![
        client("writer", WRITER, &["doc/*"], true, 0),
        client("reader", READER, &["doc/*"], false, 1),
    ];
}

/// Send one request and check the answer against the document: a status
/// documented for the path (404 from an unknown path has the error shape),
/// its required headers, its media type and its body. Returns the status.
async fn check(
    spec: &Spec,
    app: &TestApp,
    method: &str,
    target: &str,
    token: Option<&str>,
    extra: &[(&str, String)],
) -> u16 {
    let path = target.split('?').next().unwrap();
    let mut req = app
        .client
        .request(method.parse().unwrap(), format!("{}{target}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (name, value) in extra {
        req = req.header(*name, value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.unwrap();
    let what = format!("{method} {} -> {status}", &target[..target.len().min(80)]);
    assert!(
        headers.contains_key("x-request-id"),
        "{what}: no x-request-id"
    );
    if !spec.paths().contains(path) {
        assert_eq!(status, 404, "{what}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_type"], "NotFound", "{what}");
        return status;
    }
    let response = spec
        .response(path, status)
        .unwrap_or_else(|| panic!("{what}: status not documented for {path}"));
    for name in spec.required_headers(response) {
        assert!(headers.contains_key(&name), "{what}: no {name} header");
    }
    if method == "HEAD" {
        assert!(body.is_empty(), "{what}");
        return status;
    }
    let content = response
        .get("content")
        .unwrap_or_else(|| panic!("{what}: no content"));
    let media = headers["content-type"].to_str().unwrap();
    let essence = media.split(';').next().unwrap().trim();
    let documented = content
        .get(essence)
        .unwrap_or_else(|| panic!("{what}: content type {media} is not documented"));
    if essence == "application/json" {
        let body: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        spec.validate(documented.get("schema").unwrap(), &body, &what)
            .unwrap_or_else(|e| panic!("{e}\nbody: {body}"));
        if let Some(t) = body.get("error_type") {
            assert!(
                spec.error_types().contains(t.as_str().unwrap()),
                "{what}: {t}"
            );
        }
    }
    status
}

#[tokio::test]
async fn real_answers_in_token_mode_are_documented() {
    let spec = Spec::load();
    let app = spawn_with(token_mode).await;
    let long_id = "x".repeat(9000);
    let big_header = "h".repeat(17 * 1024);
    let big_body = "b".repeat(17 * 1024);
    for base in KEY_PATHS {
        let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
            ("GET", format!("{base}?id=doc/1"), Some(WRITER), 200),
            (
                "GET",
                format!("{base}?id=doc/absent&create=0"),
                Some(WRITER),
                404,
            ),
            ("GET", format!("{base}?id=doc/1"), None, 401),
            (
                "GET",
                format!("{base}?id=doc/1"),
                Some("not-a-known-token"),
                401,
            ),
            ("GET", format!("{base}?id=other"), Some(WRITER), 403),
            (
                "GET",
                format!("{base}?id=doc/new-{base}"),
                Some(WRITER),
                200,
            ),
            ("GET", base.to_string(), Some(WRITER), 400),
            ("GET", format!("{base}?id="), Some(WRITER), 400),
            // Who asks is checked before what is asked.
            ("GET", format!("{base}?id=a%FF"), None, 401),
            ("GET", format!("{base}?id=a%FF"), Some(WRITER), 400),
            ("GET", format!("{base}?id=a%0A"), Some(WRITER), 400),
            (
                "GET",
                format!("{base}?id=doc/1&create=maybe"),
                Some(WRITER),
                400,
            ),
            (
                "GET",
                format!("{base}?id=doc/1&id=doc/2"),
                Some(WRITER),
                400,
            ),
            ("GET", format!("{base}?id=doc/1&extra=1"), Some(WRITER), 400),
            (
                "GET",
                format!("{base}?id={}", "y".repeat(513)),
                Some(WRITER),
                400,
            ),
            ("GET", format!("{base}?id={long_id}"), Some(WRITER), 414),
        ];
        for (method, target, token, want) in cases {
            let got = check(&spec, &app, method, &target, token, &[]).await;
            assert_eq!(got, want, "{method} {}", &target[..target.len().min(80)]);
        }
        let got = check(
            &spec,
            &app,
            "GET",
            &format!("{base}?id=doc/1"),
            Some(WRITER),
            &[("x-padding", big_header.clone())],
        )
        .await;
        assert_eq!(got, 431);
    }
    // The reader may read but not create, one request a second.
    let second = std::time::Duration::from_millis(1100);
    assert_eq!(
        check(
            &spec,
            &app,
            "GET",
            "/api/v1/key?id=doc/1&create=false",
            Some(READER),
            &[]
        )
        .await,
        200
    );
    assert_eq!(
        check(&spec, &app, "GET", "/key?id=doc/1", Some(READER), &[]).await,
        429
    );
    tokio::time::sleep(second).await;
    assert_eq!(
        check(
            &spec,
            &app,
            "GET",
            "/key?id=doc/reader-new",
            Some(READER),
            &[]
        )
        .await,
        403
    );
    for path in spec.paths() {
        for method in ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
            let got = check(&spec, &app, method, &path, Some(WRITER), &[]).await;
            assert_eq!(got, 405, "{method} {path}");
        }
        let res = app
            .client
            .get(format!("{}{path}", app.base))
            .body(big_body.clone())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert_eq!(status, 413, "{path}: a body over 16 KiB");
        assert!(spec.response(&path, 413).is_some(), "{path}: 413");
    }
    assert_eq!(check(&spec, &app, "GET", "/metrics", None, &[]).await, 401);
    assert_eq!(
        check(&spec, &app, "GET", "/metrics", Some(WRITER), &[]).await,
        200
    );
    assert_eq!(check(&spec, &app, "GET", "/healthz", None, &[]).await, 200);
    assert_eq!(check(&spec, &app, "GET", "/readyz", None, &[]).await, 200);
    assert_eq!(
        check(&spec, &app, "GET", "/no/such/route", None, &[]).await,
        404
    );
}

#[tokio::test]
async fn outages_and_corruption_are_documented() {
    let spec = Spec::load();
    let app = spawn_with(|s| {
        s.store.backend = StoreBackend::Memory;
        s.cache.ttl_seconds = 0;
        s.kms.breaker_open_ms = 30_000;
    })
    .await;
    assert_eq!(
        check(&spec, &app, "GET", "/key?id=victim", None, &[]).await,
        200
    );
    assert_eq!(
        check(&spec, &app, "GET", "/key?id=intruder", None, &[]).await,
        200
    );

    // A record copied onto another id does not decrypt: 500.
    let store = app.memory.as_ref().unwrap();
    let mut forged = store
        .snapshot(&rkms::domain::KeyId::parse("victim").unwrap())
        .unwrap();
    forged.id = rkms::domain::KeyId::parse("intruder").unwrap();
    store.insert_raw(forged);
    assert_eq!(
        check(&spec, &app, "GET", "/key?id=intruder", None, &[]).await,
        500
    );

    // The store down: /readyz 503 naming it, /key 503.
    store.set_unavailable(true);
    assert_eq!(check(&spec, &app, "GET", "/readyz", None, &[]).await, 503);
    assert_eq!(
        check(&spec, &app, "GET", "/key?id=victim", None, &[]).await,
        503
    );
    assert_eq!(check(&spec, &app, "GET", "/healthz", None, &[]).await, 200);
    store.set_unavailable(false);

    // Every KMS region down: /key 503 until the breakers open, then /readyz
    // 503 with `breaker_open` regions.
    for name in ["local-1", "local-2", "local-3"] {
        app.kms
            .set_fault(&region(name), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    for _ in 0..4 {
        assert_eq!(
            check(&spec, &app, "GET", "/key?id=victim", None, &[]).await,
            503
        );
    }
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["kms.local-1"], "breaker_open", "{body}");
    assert_eq!(check(&spec, &app, "GET", "/readyz", None, &[]).await, 503);
}

#[test]
fn the_yaml_subset_reader_reads_what_it_claims() {
    let doc = Parser::parse(
        "a: 1\nb:\n  - x\n  - 'y: z'\n  - k: v\n    l: w\nc: |\n  line one\n\n  # not a comment\nd: []\n'200': \"q\"\n",
    );
    assert_eq!(doc.get("a").and_then(Node::str), Some("1"));
    let b = doc.get("b").unwrap().items();
    assert_eq!(b[0].str(), Some("x"));
    assert_eq!(b[1].str(), Some("y: z"));
    assert_eq!(b[2].get("l").and_then(Node::str), Some("w"));
    assert_eq!(
        doc.get("c").and_then(Node::str),
        Some("line one\n\n# not a comment")
    );
    assert_eq!(doc.get("d"), Some(&Node::List(Vec::new())));
    assert_eq!(doc.get("200").and_then(Node::str), Some("q"));
}
