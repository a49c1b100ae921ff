//! The subcommands other than `serve`: each loads what it needs, runs
//! the library, prints its report and turns the outcome into an exit code.
//!
//! Must not: hold logic the tests cannot reach through the library.

use std::process::ExitCode;

use rkms::config::{Settings, Source};

mod hash_token;
pub use hash_token::hash_token;

/// The async runtime, or the exit code after saying why there is none.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("rkms: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Write to stdout. A reader that went away (`| head -1`, `| true`) is not
/// an error and never a panic; nor does it decide the exit code: the
/// command's own outcome does (a failed `verify | true` still exits 1).
pub fn print(text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            eprintln!("rkms: cannot write to stdout: {e}");
            Err(ExitCode::FAILURE)
        }
        Ok(()) => Ok(()),
    }
}

/// Run a maintenance command against the configured KMS and store; print
/// its report; exit 1 when it found a problem.
pub fn maintenance<F, Fut>(
    settings: Settings,
    access: rkms::startup::Access,
    command: F,
) -> ExitCode
where
    F: FnOnce(
        std::sync::Arc<dyn rkms::kms::Kms>,
        std::sync::Arc<dyn rkms::store::Store>,
        Vec<rkms::domain::Region>,
    ) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, bool)>>,
{
    // A store that lives only in a serving process: a tool would read an
    // empty one, report success, and make a keyring on the way.
    if settings.store.backend == rkms::config::StoreBackend::Memory {
        eprintln!(
            "rkms: config error: store.backend: \"memory\" holds no records outside a serving process: there is nothing for this command to read"
        );
        return ExitCode::from(2);
    }
    let _log_guard = rkms::telemetry::init(&settings.log);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let (kms, store) = rkms::startup::backends(&settings, access).await?;
        let regions = settings
            .kms
            .regions
            .iter()
            .map(rkms::domain::Region::new)
            .collect();
        command(kms, store, regions).await
    });
    drop(_log_guard);
    report(result)
}

/// Print a command's report; exit 1 when it found a problem or failed.
fn report(result: anyhow::Result<(String, bool)>) -> ExitCode {
    match result {
        Ok((text, ok)) => match print(&text) {
            Err(code) => code,
            Ok(()) if ok => ExitCode::SUCCESS,
            Ok(()) => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("rkms: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn copy(
    from: &std::path::Path,
    to: &std::path::Path,
    mut options: rkms::ops::copy::Options,
) -> ExitCode {
    // `RKMS__` overrides do not apply to either file; the rest of the
    // environment does, so a client's `token_env` reads as `serve` reads
    // it (it was read from an empty environment and always refused).
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !k.starts_with("RKMS__"))
        .collect();
    let load = |flag: &str, path: &std::path::Path| {
        Settings::load_with_env(&Source::File(path.to_path_buf()), &env).map_err(|mut e| {
            // The file itself is missing or unreadable: name the flag that
            // gave it, not `--config`.
            if e.key == rkms::config::CONFIG_FILE {
                e.key = flag.into();
                e.to_string()
            } else {
                format!("{flag} {}: {e}", path.display())
            }
        })
    };
    let (source, target) = match (load("--from", from), load("--to", to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    if rkms::startup::same_store(&source, &target) {
        eprintln!(
            "rkms: copy: --from and --to name the same store ({}): there is nothing to copy",
            rkms::startup::store_identity(&source)
        );
        return ExitCode::from(2);
    }
    options.scope = format!(
        "copy from {} to {}",
        rkms::startup::store_identity(&source),
        rkms::startup::store_identity(&target)
    );
    let _log_guard = rkms::telemetry::init(&source.log);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        // Records move as they are stored, wrapped: no KMS, no keyring. The
        // source must exist and is only read; the target is made and
        // written, but not by a dry run.
        let from = rkms::startup::store(&source, false, false).await?;
        let missing_target = target.store.backend == rkms::config::StoreBackend::Sqlite
            && !target.store.sqlite.path.exists();
        let to: std::sync::Arc<dyn rkms::store::Store> = if options.dry_run && missing_target {
            // A dry run into a store that does not exist yet: it is empty.
            std::sync::Arc::new(rkms::store::memory::MemoryStore::new())
        } else {
            rkms::startup::store(&target, !options.dry_run, !options.dry_run).await?
        };
        rkms::ops::copy::run(from, to, options).await
    });
    drop(_log_guard);
    report(result.map(|summary| (summary.text(), summary.ok())))
}

pub fn convert_config(path: &std::path::Path) -> ExitCode {
    // At most a config's size: /dev/zero given by mistake must not fill
    // memory. A pipe is read (`/dev/stdin`), as a person gave it.
    const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
    let read = || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let file = std::fs::File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(std::io::Error::other("it is a directory"));
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(std::io::Error::other(format!(
                "it holds more than {MAX_CONFIG_BYTES} bytes, more than a config"
            )));
        }
        Ok(bytes)
    };
    let text = match read().map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => {
            eprintln!("rkms: {} is not UTF-8 text", path.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("rkms: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match rkms::ops::convert::convert(&path.display().to_string(), &text) {
        Ok(converted) => {
            for note in &converted.notes {
                eprintln!("rkms: note: {note}");
            }
            match print(&converted.toml) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            }
        }
        Err(e) => {
            eprintln!("rkms: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `check-config --connect`: the server's preflight, one line per check.
pub fn check_connect(settings: Settings) -> ExitCode {
    // What the checks at start warn of (a store that cannot be read, key
    // ARNs that disagree) is shown here as `serve` would log it.
    let _log_guard = rkms::telemetry::init(&settings.log);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let checks = runtime.block_on(async {
        let (kms, store) = rkms::startup::backends(&settings, rkms::startup::Access::READ).await?;
        let deps = rkms::startup::dependencies(&settings, kms, store);
        anyhow::Ok(rkms::preflight::run(&deps).await)
    });
    let checks = match checks {
        Ok(checks) => checks,
        Err(e) => {
            eprintln!("rkms: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut text = String::from("# dependency checks\n");
    for check in &checks {
        text.push_str(&check.line());
        text.push('\n');
    }
    // The TLS files, read as `serve` reads them at start.
    let tls = rkms::tls::Tls::from_settings(&settings.server.tls);
    if let Err(e) = &tls {
        text.push_str(&format!("tls: failed: {e:#}\n"));
    }
    if let Err(code) = print(&text) {
        return code;
    }
    let failed = checks.iter().filter(|c| !c.passed()).count() + usize::from(tls.is_err());
    if failed > 0 {
        eprintln!("rkms: {failed} dependency check(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// GET `url` (`http://host:port/path`, or `https://` verified against the
/// CA certificates in `ca`) and report whether it answers 200; otherwise
/// say why in one line.
pub fn healthcheck(url: &str, ca: Option<&std::path::Path>) -> ExitCode {
    let bad = |why: &str| {
        eprintln!("rkms: healthcheck: --url {why}");
        ExitCode::from(2)
    };
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return bad("is not a URL");
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return bad("must start with http:// or https://"),
    };
    let Some(authority) = uri.authority() else {
        return bad("names no host");
    };
    // It would be printed in messages, and no rkms endpoint takes one.
    if authority.as_str().contains('@') {
        return bad("must not carry a user name or password");
    }
    // A port that is given must be one: never fall back to the scheme's.
    let given_port = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or("");
    if !given_port.is_empty() && authority.port_u16().is_none() {
        return bad(&format!("has no valid port ({given_port:?})"));
    }
    let tls = match (tls, ca) {
        (false, None) => None,
        (false, Some(_)) => {
            eprintln!("rkms: healthcheck: --ca is for an https:// URL");
            return ExitCode::from(2);
        }
        (true, None) => {
            eprintln!("rkms: healthcheck: an https:// URL needs --ca FILE, the CA certificates (PEM) that sign the server's certificate");
            return ExitCode::from(2);
        }
        (true, Some(ca)) => match rkms::tls::client_config(ca) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("rkms: healthcheck: {}", rkms::report::chain(&*e));
                return ExitCode::from(2);
            }
        },
    };
    let target = match uri.path_and_query().map_or("", |p| p.as_str()) {
        t if t.starts_with('/') => t.to_owned(),
        t => format!("/{t}"),
    };
    match probe(authority, &target, tls) {
        Ok(head) if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") => {
            ExitCode::SUCCESS
        }
        Ok(head) => {
            let status = String::from_utf8_lossy(&head[9.min(head.len())..]);
            eprintln!(
                "rkms: healthcheck: {url} answered {}, not 200",
                status.trim()
            );
            ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("rkms: healthcheck: {url} did not answer: {why}");
            ExitCode::FAILURE
        }
    }
}

/// One `GET target` to `authority` (its port, or the scheme's), trying
/// each address its host resolves to; returns the first 12 bytes of the
/// answer (`HTTP/1.1 200`).
fn probe(
    authority: &axum::http::uri::Authority,
    target: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<[u8; 12], String> {
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(2);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut failures = Vec::new();
    let stream = addrs
        .iter()
        .find_map(|addr| {
            std::net::TcpStream::connect_timeout(addr, timeout)
                .map_err(|e| failures.push(format!("{addr}: {e}")))
                .ok()
        })
        .ok_or_else(|| {
            if failures.is_empty() {
                format!("{host} resolves to no address")
            } else {
                format!("cannot connect to {}", failures.join("; "))
            }
        })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let done = match tls {
        None => exchange(&mut { stream }, request.as_bytes()),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
            let conn =
                rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
            exchange(
                &mut rustls::StreamOwned::new(conn, stream),
                request.as_bytes(),
            )
        }
    };
    // rustls reports a refused certificate as an I/O error wrapping its own.
    done.map_err(|e| e.to_string())
}

fn exchange(io: &mut dyn ReadWrite, request: &[u8]) -> std::io::Result<[u8; 12]> {
    let mut head = [0u8; 12];
    io.write_all(request)?;
    io.flush()?;
    io.read_exact(&mut head)?;
    Ok(head)
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
