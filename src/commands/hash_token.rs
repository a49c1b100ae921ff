//! `rkms hash-token`: the SHA-256 of a token read from stdin, typed at a
//! terminal with its echo off (and turned back on whatever ends the
//! process), for `auth.clients[].token_sha256`.

use std::process::ExitCode;

use super::print;

/// The most stdin may hold: a token file's limit.
const MAX_INPUT: u64 = 64 * 1024;

pub fn hash_token() -> ExitCode {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    // Room for it all from the start: an outgrown buffer is freed unwiped.
    let mut input = zeroize::Zeroizing::new(Vec::with_capacity(MAX_INPUT as usize + 64));
    let read = if stdin.is_terminal() {
        // Typed by hand: ask, and keep the token off the screen (and out of
        // the terminal's scrollback) while it is typed.
        read_typed_line(&stdin).map(|typed| input = typed)
    } else {
        // Bounded: `< /dev/zero` must not fill memory.
        stdin
            .lock()
            .take(MAX_INPUT + 1)
            .read_to_end(&mut input)
            .map(|_| ())
    };
    if let Err(e) = read {
        eprintln!("rkms: hash-token: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    if input.len() as u64 > MAX_INPUT {
        eprintln!("rkms: hash-token: stdin holds more than {MAX_INPUT} bytes: give one token");
        return ExitCode::from(2);
    }
    let token = input
        .strip_suffix(b"\r\n")
        .or_else(|| input.strip_suffix(b"\n"))
        .unwrap_or(&input);
    let Ok(token) = std::str::from_utf8(token) else {
        eprintln!("rkms: hash-token: the token is not UTF-8 text");
        return ExitCode::from(2);
    };
    // A byte-order mark some editors write is no part of the token (a
    // token file drops it too): its digest would match no token sent.
    let token = token.strip_prefix('\u{feff}').unwrap_or(token);
    if !rkms::config::sendable_token(token) {
        eprintln!(
            "rkms: hash-token: give one token with no whitespace or control characters on stdin"
        );
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

/// One line typed at the terminal, with its echo off while it is typed
/// (off before the prompt shows, so nothing typed after it is echoed). A
/// signal that ends the process meanwhile (Ctrl-C, Ctrl-\\, a hang-up, a
/// kill) turns the echo back on first, and then ends it as that signal
/// would have: a shell that does not restore the terminal itself (sh,
/// dash) would be left with it off.
fn read_typed_line(stdin: &std::io::Stdin) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Write;
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Listening before the echo goes off: no moment when a signal
        // would end the process with it off.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let echo = NoEcho::on(stdin);
        eprint!(
            "rkms: hash-token: type the token, then Enter ({}): ",
            if echo.was.is_some() {
                "it is not shown"
            } else {
                "the terminal's echo could not be turned off: it IS shown"
            }
        );
        let line = tokio::task::spawn_blocking(|| {
            use std::io::BufRead;
            let mut line = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin()
                .lock()
                .read_until(b'\n', &mut line)
                .map(|_| line)
        });
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        let signalled = tokio::select! {
            line = line => {
                drop(echo);
                eprintln!();
                return line.map_err(std::io::Error::other)?;
            }
            _ = interrupt.recv() => SIGINT,
            _ = quit.recv() => SIGQUIT,
            _ = hangup.recv() => SIGHUP,
            _ = terminate.recv() => SIGTERM,
        };
        drop(echo);
        // The terminal may be gone (a hang-up): never a panic for that.
        let _ = writeln!(std::io::stderr());
        // Ended by the signal itself, as without this handler: a shell
        // script running hash-token stops at Ctrl-C only when its child
        // did (an exit status of 130 would let it carry on).
        let _ = signal_hook::low_level::emulate_default_handler(signalled);
        std::process::exit(128 + signalled)
    })
}

/// A terminal's echo turned off until dropped, when it can be.
struct NoEcho<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    was: Option<rustix::termios::Termios>,
}

impl<'a> NoEcho<'a> {
    fn on(stdin: &'a std::io::Stdin) -> Self {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        use std::os::fd::AsFd;
        let fd = stdin.as_fd();
        let was = tcgetattr(fd).ok().filter(|was| {
            let mut quiet = was.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            tcsetattr(fd, OptionalActions::Now, &quiet).is_ok()
        });
        Self { fd, was }
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        if let Some(was) = &self.was {
            let _ = rustix::termios::tcsetattr(self.fd, rustix::termios::OptionalActions::Now, was);
        }
    }
}
