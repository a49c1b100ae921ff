//! The `rkms` binary: parse the command line, load config, start logging,
//! run. Everything else lives in the library.
//!
//! Must not: hold logic the tests cannot reach through the library.

use std::path::PathBuf;
use std::process::ExitCode;

mod commands;

use clap::{Parser, Subcommand};
use commands::{
    check_connect, convert_config, copy, hash_token, healthcheck, maintenance, print, runtime,
};
use rkms::config::{Settings, Source};
use rkms::startup::{shutdown_signal, Access, Application};

#[derive(Parser)]
#[command(
    name = "rkms",
    version,
    about = "Multi-region key broker: GET /key?id=ID"
)]
struct Cli {
    /// Config file (default: $RKMS_CONFIG, else ./config.toml if present,
    /// else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Development mode: allows store.backend = "memory" (keys are lost on exit).
    #[arg(long, global = true)]
    dev: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// A `--checkpoint` path that can name a file: checked before anything
/// opens, as a run refused only when it first saved progress had already
/// made its target store or added a region to the keyring.
fn checkpoint_path(given: &str) -> Result<PathBuf, String> {
    if given.ends_with('/') {
        return Err("ends in '/': give the path of a file".into());
    }
    let path = PathBuf::from(given);
    if std::fs::metadata(&path).is_ok_and(|meta| !meta.is_file()) {
        return Err("not a regular file".into());
    }
    let dir = checkpoint_dir(&path);
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(path)
}

/// The directory a checkpoint is saved in.
fn checkpoint_dir(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    }
}

/// For a run that saves its checkpoint (not a dry run): a file can be
/// made beside it, tried by making and removing one.
fn checkpoint_writable(path: Option<&std::path::Path>) -> Result<(), ExitCode> {
    let Some(path) = path else {
        return Ok(());
    };
    let dir = checkpoint_dir(path);
    let probe = dir.join(format!(".rkms-checkpoint-probe-{}", std::process::id()));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match made {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "rkms: --checkpoint {}: no file can be written in {}: {e}",
                path.display(),
                dir.display()
            );
            Err(ExitCode::from(2))
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Load and validate the config and the TLS files it names, print the
    /// effective settings (secrets redacted).
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
        #[arg(long, value_parser = checkpoint_path)]
        checkpoint: Option<PathBuf>,
        /// KMS calls per second, at most (0 = unlimited): leave quota for
        /// production traffic.
        #[arg(long, default_value_t = 100)]
        max_rps: u32,
        /// Count what would be done; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Parallel scan segments, 1 to 1000 (each runs as its own task).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
        segments: u32,
        /// Stop after this many records, at least 1 (resume with --checkpoint).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_records: Option<u64>,
    },
    /// Decrypt every record's ciphertext in each region separately; exit 0
    /// only when every record is recoverable in every region.
    Verify {
        /// Verify a random sample of this many records (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        sample: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// KMS calls per second, at most (0 = unlimited): leave quota for
        /// production traffic.
        #[arg(long, default_value_t = 100)]
        max_rps: u32,
        /// Parallel scan segments, 1 to 1000 (each runs as its own task).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
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
        /// Resume from, and save progress to, this file.
        #[arg(long, value_parser = checkpoint_path)]
        checkpoint: Option<PathBuf>,
        /// Count what would be copied; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Parallel scan segments, 1 to 1000 (each runs as its own task).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
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
        /// What to ask (a container whose config serves elsewhere, or
        /// over TLS, sets RKMS_HEALTHCHECK_URL, e.g. to its metrics_listen).
        #[arg(
            long,
            env = "RKMS_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
        /// For an https:// URL: the CA certificates (PEM) that sign the
        /// server's certificate, which must name the URL's host.
        #[arg(long, value_name = "FILE")]
        ca: Option<std::path::PathBuf>,
    },
}

/// The variable that names the config file when `--config` is not given.
const CONFIG_ENV: &str = "RKMS_CONFIG";

/// The config file named by `--config`, else by `RKMS_CONFIG`. A variable
/// that is set but empty (a manifest's value left blank) is refused: read
/// as unset, it would open `./config.toml` or the defaults, and with them
/// another store and keyring.
fn config_file(given: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    if given.is_some() {
        return Ok(given);
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(value) if value.is_empty() => Err(format!(
            "config error: {CONFIG_ENV}: set but empty; set it to the config file's path, or unset it"
        )),
        value => Ok(value.map(PathBuf::from)),
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(failed) = rkms::hardening::survive_file_size_limit() {
        eprintln!("rkms: warning: a write past the file size limit will end the process: {failed}");
    }
    match &cli.command {
        Some(Command::Healthcheck { url, ca }) => return healthcheck(url, ca.as_deref()),
        Some(Command::HashToken) => return hash_token(),
        Some(Command::ConvertConfig { rkms_config }) => return convert_config(rkms_config),
        Some(Command::Copy {
            from,
            to,
            checkpoint,
            dry_run,
            segments,
        }) => {
            if let Err(code) = checkpoint_writable(checkpoint.as_deref().filter(|_| !*dry_run)) {
                return code;
            }
            if let Ok(Some(config)) = config_file(cli.config.clone()) {
                eprintln!(
                    "rkms: copy: warning: --config (or RKMS_CONFIG) {} is not used: copy reads its stores from --from and --to",
                    config.display()
                );
            }
            let options = rkms::ops::copy::Options {
                segments: *segments,
                dry_run: *dry_run,
                checkpoint: checkpoint.clone(),
                scope: String::new(),
            };
            return copy(from, to, options);
        }
        _ => {}
    }
    cli.config = match config_file(cli.config.take()) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    let mut env = match Settings::environment() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.dev {
        const ALLOW: &str = "RKMS__STORE__MEMORY__EPHEMERAL_OK";
        match env.iter().find(|(name, _)| name == ALLOW) {
            // Already allowed: --dev says the same.
            Some((_, value)) if value.trim() == "true" => {}
            Some((_, value)) => {
                eprintln!(
                    "rkms: config error: store.memory.ephemeral_ok: --dev sets it to true and the environment variable {ALLOW} sets it to {}: keep one",
                    rkms::config::printable(value)
                );
                return ExitCode::from(2);
            }
            None => env.push((ALLOW.into(), "true".into())),
        }
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
            for line in settings.auth.tokenless_clients() {
                eprintln!("rkms: note: {line}");
            }
            if connect {
                return check_connect(settings);
            }
            // The TLS files are local: a certificate, key, CA or revocation
            // list that `serve` would stop on is a config mistake here too.
            if let Err(e) = rkms::tls::Tls::from_settings(&settings.server.tls) {
                eprintln!("rkms: {e:#}");
                return ExitCode::from(2);
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
            if let Err(code) = checkpoint_writable(checkpoint.as_deref().filter(|_| !dry_run)) {
                return code;
            }
            let options = rkms::ops::backfill::Options {
                segments,
                max_rps,
                dry_run,
                checkpoint,
                max_records,
                scope: {
                    // The set of regions, whatever their order of preference.
                    let mut regions = settings.kms.regions.clone();
                    regions.sort();
                    format!(
                        "backfill of {} to regions {}",
                        rkms::startup::store_identity(&settings),
                        regions.join(",")
                    )
                },
            };
            // The store must exist; a real run may add master keys for the
            // regions it fills (the local KMS), a dry run changes nothing.
            let access = rkms::startup::Access {
                make_store: false,
                write_store: !dry_run,
                add_master_keys: !dry_run,
            };
            maintenance(settings, access, |kms, store, regions| async move {
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
                sample: sample.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            };
            maintenance(settings, Access::READ, |kms, store, regions| async move {
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

fn serve(settings: Settings) -> ExitCode {
    let _log_guard = rkms::telemetry::init(&settings.log);
    for failed in rkms::hardening::disable_core_dumps() {
        tracing::warn!(setting = %failed, "cannot keep key material out of core dumps");
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    // A blocking read stuck on a hung mount (a token file, say) must not
    // keep the process from exiting once the server has drained.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
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
