#!/usr/bin/env python3
"""Run Schemathesis against a real rkms and fail on any contract violation.

Starts the rkms binary in token mode on a free loopback port with a fresh
data directory, waits for /readyz, runs `schemathesis run openapi.yaml`
with the bearer token, prints Schemathesis's summary line, and always stops
the server. Exit status: Schemathesis's (non-zero on any server error or
response that does not match the document), or 1 when rkms could not start
or died during the run.

Standard library only; `make api-check` (mk/api.mk) runs it with the
pinned Schemathesis venv:

    python3 tests/schemathesis/run.py --rkms target/debug/rkms \
        --schemathesis target/venv-schemathesis/bin/schemathesis
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Checks run on every response. Left out: positive_data_acceptance (an id
# is at most 512 *bytes*, JSON Schema's maxLength counts characters, so a
# schema-valid id of multi-byte characters is rightly 400),
# use_after_free and ensure_resource_availability (no DELETE or POST),
# object_level_authorization (needs two clients' credentials).
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "allow_header_conformance",
        "ignored_auth",
    ]
)

READY_WITHIN_S = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(data: Path, port: int, token: str) -> Path:
    digest = hashlib.sha256(token.encode()).hexdigest()
    config = data / "rkms.toml"
    config.write_text(
        f"""[server]
listen = "127.0.0.1:{port}"

[kms]
provider = "local"

[kms.local]
keyring = "{data / 'keyring.json'}"

[store]
backend = "sqlite"

[store.sqlite]
path = "{data / 'rkms.sqlite3'}"

[auth]
mode = "token"

[[auth.clients]]
name = "schemathesis"
token_sha256 = "{digest}"
ids = ["*"]
create = true
"""
    )
    return config


def server_env() -> dict[str, str]:
    """The caller's environment without anything that reconfigures rkms."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RKMS_") and k not in ("RUST_LOG",)
    }
    env["RKMS__LOG__LEVEL"] = "warn"
    return env


def wait_ready(proc: subprocess.Popen, base: str) -> bool:
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as res:
                if res.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(rkms: Path, data: Path, token: str) -> tuple[subprocess.Popen, str, Path]:
    """Start rkms on a free port; retried when the port was taken meanwhile."""
    log = data / "rkms.log"
    for _ in range(3):
        port = free_port()
        config = write_config(data, port, token)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(rkms), "--config", str(config)],
                cwd=data,
                env=server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            ready = wait_ready(proc, base)
        except BaseException:
            stop(proc)
            raise
        if ready:
            return proc, base, log
        stop(proc)
    sys.stderr.write(f"api-check: rkms did not become ready; its log:\n{tail(log)}\n")
    sys.exit(1)


SUMMARY = re.compile(r"^=+ (.+?) =+$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rkms", type=Path, default=ROOT / "target/debug/rkms")
    ap.add_argument(
        "--schemathesis",
        type=Path,
        default=ROOT / "target/venv-schemathesis/bin/schemathesis",
    )
    ap.add_argument("--spec", type=Path, default=ROOT / "openapi.yaml")
    ap.add_argument("--max-examples", type=int, default=100)
    ap.add_argument(
        "--seed",
        default="20261126",
        help="Hypothesis seed (fixed by default so CI runs are reproducible; 'random' for a new one)",
    )
    ap.add_argument("--workers", default="2")
    args = ap.parse_args()
    # The server and Schemathesis run in the temporary directory.
    args.rkms = args.rkms.resolve()
    args.schemathesis = args.schemathesis.absolute()
    args.spec = args.spec.resolve()

    # Stop the server however this script ends (ctrl-c, SIGTERM from make).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="rkms-api-check-") as tmp:
        data = Path(tmp)
        proc, base, log = start(args.rkms, data, token)
        try:
            cmd = [
                str(args.schemathesis),
                "--no-color",
                "run",
                str(args.spec),
                "--url",
                base,
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--workers",
                args.workers,
                "--generation-database",
                "none",
            ]
            if args.seed != "random":
                cmd += ["--seed", args.seed]
            config = Path(__file__).with_name("schemathesis.toml")
            if config.exists():
                cmd[1:1] = ["--config-file", str(config)]
            print(
                f"api-check: rkms at {base}; schemathesis run {args.spec.name}"
                f" (max {args.max_examples} examples per operation, seed {args.seed})",
                flush=True,
            )
            run = subprocess.Popen(
                cmd,
                cwd=data,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            summary = None
            assert run.stdout is not None
            for line in run.stdout:
                sys.stdout.write(line)
                m = SUMMARY.match(line.strip())
                if m:
                    summary = m.group(1)
            status = run.wait()
            alive = proc.poll() is None
        finally:
            stop(proc)
        print(f"api-check: schemathesis: {summary or '(no summary line)'}", flush=True)
        if not alive:
            print(f"api-check: rkms died during the run; its log:\n{tail(log)}", file=sys.stderr)
            return 1
        if status != 0:
            print(f"api-check: schemathesis failed (exit {status}); rkms log:\n{tail(log)}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
