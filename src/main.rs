//! The `rkms` binary: parse the command line, load config, start logging,
//! run. Everything else lives in the library.
//!
//! Must not: hold logic the tests cannot reach through the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rkms::config::{Settings, Source};
use rkms::startup::{shutdown_signal, Application};

#[derive(Parser)]
#[command(
    name = "rkms",
    version,
    about = "Multi-region key broker: GET /key?id=ID"
)]
struct Cli {
    /// Config file (default: ./config.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "RKMS_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: allows store.backend = "memory" (keys are lost on exit).
    #[arg(long, global = true)]
    dev: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Load and validate the config, print the effective settings (secrets redacted).
    CheckConfig {
        /// Also check every dependency (the store, each region's KMS key)
        /// as the server does at start; exit non-zero if one fails.
        #[arg(long)]
        connect: bool,
    },
    /// Add every configured region a record lacks, for every record
    /// (after adding a region, or creates made during an outage).
    Backfill {
        /// Resume from, and save progress to, this file.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// KMS calls per second, at most (0 = unlimited): leave quota for
        /// production traffic.
        #[arg(long, default_value_t = 100)]
        max_rps: u32,
        /// Count what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Parallel scan segments.
        #[arg(long, default_value_t = 4)]
        segments: u32,
        /// Stop after this many records (resume with --checkpoint).
        #[arg(long)]
        max_records: Option<u64>,
    },
    /// Decrypt every record's ciphertext in each region separately; exit 0
    /// only when every record is recoverable in every region.
    Verify {
        /// Verify a random sample of this many records.
        #[arg(long)]
        sample: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 100)]
        max_rps: u32,
        #[arg(long, default_value_t = 4)]
        segments: u32,
    },
    /// Copy every record from one store to another without decrypting;
    /// ids already in the target are left untouched.
    Copy {
        /// Config naming the source store (environment overrides ignored).
        #[arg(long)]
        from: PathBuf,
        /// Config naming the target store (environment overrides ignored).
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value_t = 4)]
        segments: u32,
    },
    /// Print the rkms config equivalent to an RKMS (Go) config.toml.
    ConvertConfig {
        /// The RKMS (Go) config file.
        rkms_config: PathBuf,
    },
    /// Print the SHA-256 (hex) of a token read from stdin, for
    /// `auth.clients[].token_sha256`. One trailing newline is ignored.
    HashToken,
    /// Exit 0 when the server answers /healthz with 200 (for container
    /// health checks: the image has no curl).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Healthcheck { url }) => return healthcheck(url),
        Some(Command::HashToken) => return hash_token(),
        Some(Command::ConvertConfig { rkms_config }) => return convert_config(rkms_config),
        Some(Command::Copy {
            from,
            to,
            checkpoint,
            dry_run,
            segments,
        }) => {
            let options = rkms::ops::copy::Options {
                segments: *segments,
                dry_run: *dry_run,
                checkpoint: checkpoint.clone(),
            };
            return copy(from, to, options);
        }
        _ => {}
    }
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    if cli.dev {
        env.push(("RKMS__STORE__MEMORY__EPHEMERAL_OK".into(), "true".into()));
    }
    let loaded = Settings::locate(cli.config.as_deref()).and_then(|source| {
        Settings::load_with_env(&source, &env).map(|settings| (source, settings))
    });
    let (source, settings) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { connect } => {
            let origin = match source {
                Source::File(p) => format!("{} and the environment", p.display()),
                Source::Defaults => "built-in defaults and the environment".into(),
            };
            let text = format!(
                "# effective settings (from {origin})\n{}",
                settings.redacted_toml()
            );
            // A reader that stops early (`| head -1`) is not an error, and
            // must never turn into a panic.
            if let Err(code) = print(&text) {
                return code;
            }
            if connect {
                return check_connect(settings);
            }
            ExitCode::SUCCESS
        }
        Command::Serve => serve(settings),
        Command::Backfill {
            checkpoint,
            max_rps,
            dry_run,
            segments,
            max_records,
        } => {
            let options = rkms::ops::backfill::Options {
                segments,
                max_rps,
                dry_run,
                checkpoint,
                max_records,
            };
            maintenance(settings, |kms, store, regions| async move {
                let summary = rkms::ops::backfill::run(kms, store, regions, options).await?;
                anyhow::Ok((summary.text(), summary.ok()))
            })
        }
        Command::Verify {
            sample,
            json,
            max_rps,
            segments,
        } => {
            let options = rkms::ops::verify::Options {
                segments,
                max_rps,
                sample,
            };
            maintenance(settings, |kms, store, regions| async move {
                let report = rkms::ops::verify::run(kms, store, regions, options).await?;
                let text = if json {
                    format!("{}\n", serde_json::to_string_pretty(&report)?)
                } else {
                    report.text()
                };
                anyhow::Ok((text, report.recoverable))
            })
        }
        Command::Healthcheck { .. }
        | Command::HashToken
        | Command::ConvertConfig { .. }
        | Command::Copy { .. } => ExitCode::FAILURE,
    }
}

/// Write to stdout; a reader that went away (`| head -1`) is not an error,
/// and must never turn into a panic.
fn print(text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("rkms: cannot write to stdout: {e}");
            Err(ExitCode::FAILURE)
        }
        Ok(()) => Ok(()),
    }
}

/// Run a maintenance command against the configured KMS and store; print
/// its report; exit 1 when it found a problem.
fn maintenance<F, Fut>(settings: Settings, command: F) -> ExitCode
where
    F: FnOnce(
        std::sync::Arc<dyn rkms::kms::Kms>,
        std::sync::Arc<dyn rkms::store::Store>,
        Vec<rkms::domain::Region>,
    ) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, bool)>>,
{
    let _log_guard = rkms::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (kms, store) = rkms::startup::backends(&settings).await?;
        let regions = settings
            .kms
            .regions
            .iter()
            .map(rkms::domain::Region::new)
            .collect();
        command(kms, store, regions).await
    });
    drop(_log_guard);
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

fn copy(
    from: &std::path::Path,
    to: &std::path::Path,
    options: rkms::ops::copy::Options,
) -> ExitCode {
    let load = |path: &std::path::Path| {
        Settings::load_with_env(&Source::File(path.to_path_buf()), &[])
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let (source, target) = match (load(from), load(to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = rkms::telemetry::init(&source.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (_, from) = rkms::startup::backends(&source).await?;
        let (_, to) = rkms::startup::backends(&target).await?;
        rkms::ops::copy::run(from, to, options).await
    });
    drop(_log_guard);
    match result {
        Ok(summary) => match print(&summary.text()) {
            Err(code) => code,
            Ok(()) if summary.ok() => ExitCode::SUCCESS,
            Ok(()) => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("rkms: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn convert_config(path: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
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
fn check_connect(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = runtime.block_on(async {
        let (kms, store) = rkms::startup::backends(&settings).await?;
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
    if let Err(code) = print(&text) {
        return code;
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        eprintln!("rkms: {failed} dependency check(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn hash_token() -> ExitCode {
    use std::io::Read;
    let mut input = zeroize::Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("rkms: hash-token: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let token = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(&input);
    let Ok(token) = std::str::from_utf8(token) else {
        eprintln!("rkms: hash-token: the token is not UTF-8 text");
        return ExitCode::from(2);
    };
    if token.is_empty() || token.chars().any(char::is_whitespace) {
        eprintln!("rkms: hash-token: give one token with no whitespace on stdin");
        return ExitCode::from(2);
    }
    if token.len() < rkms::config::MIN_TOKEN_LEN {
        eprintln!(
            "rkms: hash-token: warning: a token shorter than {} characters is easy to guess",
            rkms::config::MIN_TOKEN_LEN
        );
    }
    match print(&format!("{}\n", rkms::auth::token_digest(token))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// GET `url` (plain `http://host:port/path`) and report whether it is a 200.
fn healthcheck(url: &str) -> ExitCode {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("rkms: healthcheck: --url must start with http://");
        return ExitCode::from(2);
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let timeout = std::time::Duration::from_secs(2);
    let answer = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, timeout).ok())
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(timeout)).ok()?;
            let request =
                format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).ok()?;
            Some(head)
        });
    match answer {
        Some(head) if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") => {
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("rkms: healthcheck: {url} did not answer 200");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings) -> ExitCode {
    let _log_guard = rkms::telemetry::init(&settings.log);
    for failed in rkms::hardening::disable_core_dumps() {
        tracing::warn!(setting = %failed, "cannot keep key material out of core dumps");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "rkms stopped with an error");
            // Flush the buffered logs first so the one-line reason comes last.
            drop(_log_guard);
            eprintln!("rkms: {e:#}");
            ExitCode::FAILURE
        }
    }
}
