//! Helpers shared by the integration-test binaries: running the real
//! `rkms` binary and reading its JSON logs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct Proc {
    pub child: Reaped,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Where the log goes, when it goes to a file ([`start_logging_to`]).
    pub log_file: Option<std::path::PathBuf>,
    /// The thread reading stderr; it ends when the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A started `rkms`. A test or benchmark that panics must not leave its
/// server running: the process is killed when this drops still running
/// (one that has exited and been waited for is left alone).
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Wait for the process to exit and collect what it wrote to the
    /// pipes it was given.
    pub fn wait_with_output(mut self) -> std::io::Result<Output> {
        match self.0.take() {
            Some(child) => child.wait_with_output(),
            None => Err(std::io::Error::other("the process was already reaped")),
        }
    }
}

impl Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("present until wait_with_output")
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("present until wait_with_output")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Start the binary and wait for its "rkms serving" line.
pub fn start(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "rkms serving" {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("rkms did not start: {:?}", logs.lock().unwrap()));
    Proc {
        child: Reaped::new(child),
        base: format!("http://{addr}"),
        logs,
        log_file: None,
        reader: Some(reader),
    }
}

pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Send the signal `name` (`TERM`, `HUP`, ...) to `child`.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

pub fn stop(proc: Proc) -> (std::process::ExitStatus, Vec<String>) {
    stop_with(proc, "TERM")
}

/// Stop the process with the signal `name`; its exit status and every
/// line it logged.
pub fn stop_with(mut proc: Proc, name: &str) -> (std::process::ExitStatus, Vec<String>) {
    signal(&proc.child, name);
    let status = proc.child.wait().unwrap();
    // Every line is read once the reader has seen the pipe close.
    if let Some(reader) = proc.reader.take() {
        let _ = reader.join();
    }
    let logs = proc.logs.lock().unwrap().clone();
    (status, logs)
}

/// The body of a GET of `url`, as text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// Whether `base` stops accepting connections within two seconds.
pub async fn refuses_connections(base: &str) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Start the binary with its log written to `log_file`, and wait for its
/// "rkms serving" line. For load runs: nothing reads the log while it runs,
/// so the harness does not compete with the server for CPU.
/// The server appends (`O_APPEND`), so the file can be emptied between
/// runs and it writes on from the start ([`empty_log`]).
pub fn start_logging_to(mut cmd: Command, log_file: &std::path::Path) -> Proc {
    std::fs::File::create(log_file).unwrap();
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(log_file)
        .unwrap();
    let mut child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
    for _ in 0..600 {
        let text = std::fs::read_to_string(log_file).unwrap_or_default();
        let addr = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "rkms serving")
            .and_then(|v| v["addr"].as_str().map(str::to_owned));
        if let Some(addr) = addr {
            return Proc {
                child: Reaped::new(child),
                base: format!("http://{addr}"),
                logs: Arc::new(Mutex::new(Vec::new())),
                log_file: Some(log_file.to_path_buf()),
                reader: None,
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "rkms did not start: {}",
        std::fs::read_to_string(log_file).unwrap_or_default()
    );
}

/// Empty the log file of a server started with [`start_logging_to`]: a
/// load run writes an audit line per request, several GB over a whole
/// benchmark, and what was read from it is no longer needed.
pub fn empty_log(log_file: &std::path::Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(log_file) {
        let _ = file.set_len(0);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the binary on `port` and wait until it accepts connections,
/// without relying on its log (which the test may have silenced or left
/// unread). `stderr` says what happens to the log. The server is killed
/// if the test panics before it stops it.
pub fn start_on_port(mut cmd: Command, port: u16, stderr: Stdio) -> Reaped {
    let mut child = cmd
        .env("RKMS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Reaped::new(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("rkms exited during startup: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("rkms did not start listening on {port}");
}
