//! Process hardening at start: plaintext keys live in this process's
//! memory, so it must never be written to a core dump or read by another
//! process of the same user through ptrace.
//!
//! Must not: fail startup on a platform without these controls.

/// Turn core dumps off (RLIMIT_CORE = 0) and, on Linux, mark the process
/// not dumpable (PR_SET_DUMPABLE 0: no core, no ptrace attach by
/// same-user processes). Returns what could not be set, for the log.
pub fn disable_core_dumps() -> Vec<String> {
    let mut failed = Vec::new();
    let zero = rustix::process::Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Core, zero) {
        failed.push(format!("RLIMIT_CORE: {e}"));
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        failed.push(format!("PR_SET_DUMPABLE: {e}"));
    }
    failed
}

/// Set when a write went past the file size limit (RLIMIT_FSIZE); the
/// handler only has to exist for SIGXFSZ not to end the process.
static FILE_SIZE_LIMIT_HIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Keep SIGXFSZ from killing the process: a write past the file size limit
/// (`ulimit -f`) then fails with EFBIG, which the store answers as it
/// answers a full disk (503, stored keys still served), rather than end
/// every request in flight with the process. Returns what could not be
/// set, for the log.
pub fn survive_file_size_limit() -> Option<String> {
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, &FILE_SIZE_LIMIT_HIT)
        .err()
        .map(|e| format!("SIGXFSZ: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_are_off_after_hardening() {
        assert!(super::disable_core_dumps().is_empty());
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!(limit.current, Some(0));
        assert_eq!(limit.maximum, Some(0));
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
