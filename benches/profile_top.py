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
    ("audit event: Audit::emit -> tracing JSON formatter, timestamp, log buffer",
     r"rkms::routes::key::Audit::emit|tracing_core::event::Event::dispatch|tracing::__macro_support"),
    ("request span: TraceLayer (make_span, on_response, span enter/exit/close)",
     r"tower_http::trace::|tracing::span::|tracing_subscriber::registry|tracing_core::span|tracing_core::dispatcher|rkms::routes::router::\{c\}"),
    ("prometheus: with_label_values + inc/observe (record_metrics, broker counters)",
     r"prometheus::"),
    ("record_metrics middleware (own work: MatchedPath clone, Instant::now)",
     r"rkms::routes::record_metrics"),
    ("SetRequestIdLayer: UUID v4 + HeaderValue per request",
     r"<?tower_http::request_id::SetRequestId|tower_http::request_id::MakeRequestUuid|<tower_http::request_id::MakeRequestUuid|uuid::|<?rand::"),
    ("PropagateRequestIdLayer (header copy to the response)",
     r"<?tower_http::request_id::Propagate"),
    ("drop_unusable_request_id (map_request)", r"rkms::routes::drop_unusable_request_id|<?tower::util::map_request"),
    ("check_sizes middleware (URI length, header walk, content-length)",
     r"rkms::routes::check_sizes"),
    ("shed_load middleware (semaphore try_acquire_owned, permit drop)",
     r"rkms::routes::shed_load|<?tokio::sync::batch_semaphore|<?tokio::sync::semaphore"),
    ("TimeoutLayer (a timer entry per request: register, reregister, cancel)",
     r"<?tower_http::timeout|<?tokio::time::sleep|<?tokio::runtime::time::entry|<?tokio::runtime::time::.*Handle>::(reregister|clear_entry)|<?tokio::runtime::time::wheel"),
    ("RequestBodyLimitLayer", r"<?tower_http::limit"),
    ("axum middleware::from_fn plumbing (boxed futures, Next, state clone/drop)",
     r"<?axum::middleware::|\{async_block#0\}<fn\(axum::extract::state::State"),
    ("axum router, boxed services (per-request clone_box/drop of the layer stack)",
     r"<?axum::routing::|<?tower::util::(boxed|boxed_clone|boxed_clone_sync|oneshot|map_future|map_err|map_response)|<?axum::util::|<?axum::serve|<T as tower::util::boxed_clone_sync|<?hyper_util::service"),
    ("moka cache get (+ read-op recording)", r"<?moka::"),
    ("auth.authenticate (token: SHA-256 + compare)", r"rkms::auth::|<?sha2::|<?subtle::"),
    ("parse_query / KeyId::parse", r"rkms::routes::key::(parse_query|decode_component)|rkms::domain::KeyId::parse"),
    ("key_response: JSON body (serde_json), headers", r"rkms::routes::key::key_response|<?serde_json::ser::to_writer"),
    ("base64 of the key", r"<?base64::|rkms::domain::.*to_base64"),
    ("broker get_or_create_within (own work)", r"rkms::broker::"),
    ("get_key handler (own work, extractors)", r"rkms::routes::key::get_key|<?axum::handler|<?axum::extract|<?axum_core::extract|<F as axum::handler::Handler"),
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
