#!/usr/bin/env python3
"""Where the server's CPU goes, from a folded perf profile
(inferno-collapse-perf output, as benches/profile.sh writes).

Each sample is charged to its nearest owner: walking its stack from the
leaf up, the first frame whose function path (generic arguments removed)
matches one of OWNERS below. So a middleware is charged for its own work
(and the allocations, clones and syscalls it makes), not for the inner
service it wraps, whose frames are nearer the leaf. Samples with no owner
are "other". Percentages are of all the server's on-CPU samples.

Usage: benches/profile_top.py FILE.folded [--frames N]
"""
import re
import sys
from collections import Counter

# (owner, regex matched at the start of a normalized frame).
OWNERS = [
    ("audit line: fixed-schema writer, timestamp, log buffer (telemetry::audit)",
     r"rkms::telemetry::audit|rkms::routes::key::Audit::emit|rkms::telemetry::(buffer::)?Buffer"),
    ("request span and log events (disabled at warn: callsite checks)",
     r"tracing::span::|tracing_subscriber::|tracing_core::|tracing::__macro_support"),
    ("prometheus: inc/observe (pre-resolved route metrics, broker counters)",
     r"prometheus::"),
    ("load shedding: semaphore try_acquire, permit drop",
     r"<?tokio::sync::batch_semaphore|<?tokio::sync::semaphore"),
    ("request id: counter, hex, HeaderValue (routes::request_id)",
     r"rkms::routes::request_id::"),
    ("size limits: URI length, header walk, content-length (edge oversized)",
     r"rkms::routes::edge::oversized"),
    ("edge service: dispatch, boxed future, response header, metrics (own work)",
     r"rkms::routes::edge::|<rkms::routes::edge::"),
    ("axum::serve + hyper-util glue (TowerToHyperService, Body::new)",
     r"<?axum::routing::|<?tower::util::|<?axum::util::|<?axum::serve|<?hyper_util::service|<?axum_core::body"),
    ("quick_cache get (shard lock, hash, S3-FIFO mark)", r"<?quick_cache::|<?std::hash::random|<?core::hash::sip"),
    ("auth.authenticate (token: SHA-256 + compare)", r"rkms::auth::|<?sha2::|<?subtle::"),
    ("parse_query / KeyId::parse", r"rkms::routes::key::(parse_query|decode_component)|rkms::domain::KeyId::parse"),
    ("key_response: JSON body (serde_json), headers", r"rkms::routes::key::key_response|<?serde_json::ser::to_writer"),
    ("base64 of the key", r"<?base64::|rkms::domain::.*to_base64"),
    ("broker get_or_create_within (own work)", r"rkms::broker::"),
    ("get_key handler (own work)", r"rkms::routes::key::get_key"),
    ("hyper HTTP/1 (parse, encode, dispatch)", r"<?hyper::"),
    ("kernel: socket I/O and wakeups", r"entry_SYSCALL|do_syscall_64|__x64_sys|<?std::sys::net|<?mio::|__GI___(writev|readv|libc_read|libc_write)|<?tokio::net|<?tokio::io"),
    ("tokio scheduler (tasks, park/unpark, I/O driver)", r"<?tokio::runtime::"),
]

COMPILED = [(name, re.compile(r"^(?:" + rx + ")")) for name, rx in OWNERS]


def normalize(frame):
    """Drop generic arguments below the outermost `<…>`, and closure marks."""
    out, depth = [], 0
    for ch in frame:
        if ch == "<":
            depth += 1
            if depth <= 1:
                out.append(ch)
        elif ch == ">":
            if depth <= 1:
                out.append(ch)
            depth -= 1
        elif depth <= 1:
            out.append(ch)
    return "".join(out).replace("{{closure}}", "{c}")


def owner_of(frames):
    for frame in reversed(frames):
        # Pieces of a generic name that held "; " start with a space: skip.
        if frame.startswith(" "):
            continue
        f = normalize(frame)
        for name, rx in COMPILED:
            if rx.search(f):
                return name
    return "other (allocator, std, unresolved)"


def main():
    path = sys.argv[1]
    frames_n = 0
    if "--frames" in sys.argv:
        frames_n = int(sys.argv[sys.argv.index("--frames") + 1])
    total = 0
    owners = Counter()
    leaf = Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n)
            total += n
            frames = stack.split(";")
            owners[owner_of(frames)] += n
            leaf[normalize(frames[-1])] += n
    print(f"{path}: {total} sample weight")
    print("\nnearest owner, % of the server's CPU samples:")
    for name, n in owners.most_common():
        print(f"  {100.0 * n / total:6.2f}%  {name}")
    if frames_n:
        print(f"\ntop {frames_n} self (leaf) frames:")
        for fr, n in leaf.most_common(frames_n):
            print(f"  {100.0 * n / total:6.2f}%  {fr[:150]}")


if __name__ == "__main__":
    main()
