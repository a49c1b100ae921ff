#!/usr/bin/env python3
"""Offline checks of rkms's deployment artefacts: the container image
(Dockerfile), the Helm chart (helm/rkms) and the Terraform modules
(terraform/). No Docker engine, cluster or cloud account is needed.

Run by `make deploy-check` inside the venv built from
deploy/requirements.txt; checkov runs from its own venv (--checkov).
Each check prints one PASS, FAIL or SKIP line (with details under a
failure); the last line counts them. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import hcl2
import kubernetes_validate
import yaml
from helm_python.chart import Chart, lint

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "rkms"
TERRAFORM = ROOT / "terraform"
RELEASE, NAMESPACE = "rkms", "rkms"

# The chart's kubeVersion floor and the newest schema kubernetes-validate has.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Prometheus Operator kinds: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The mount prefix of the tokens and TLS Secrets in the pod.
SECRETS_DIR = "/var/run/secrets/rkms"

# The AWS provider the Terraform checks validate with (a local filesystem
# mirror: TF_PROVIDER_MIRROR, default /opt/tf-plugins); every module's
# constraint must admit it and have an upper bound.
AWS_PROVIDER_VERSION = "5.100.0"
TF_PROVIDER_MIRROR = Path(os.environ.get("TF_PROVIDER_MIRROR", "/opt/tf-plugins"))

# The IAM grant of rkms, exactly (terraform/modules/access).
KMS_ACTIONS = {"kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"}
DYNAMODB_ACTIONS = {
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:Scan",
    "dynamodb:DescribeTable",
}


class CheckFailed(Exception):
    """A check found a problem; the message says which."""


class Skipped(Exception):
    """A check could not run here; the message says why."""


def run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None,
        ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run a command; its output, or CheckFailed with the output."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, check=False,
    )
    if proc.returncode not in ok_codes:
        raise CheckFailed(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{proc.stdout.strip()}")
    return proc.stdout


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text()) or {}


def plaintext_ok(values: dict) -> dict:
    """`values` with plain HTTP accepted (tls.allowPlaintext) unless they
    turn TLS on: the chart refuses plain HTTP by default, and most checks
    are about other things. `schema_rejects` checks that refusal."""
    if values.get("tls", {}).get("enabled"):
        return values
    return deep_merge(values, {"tls": {"allowPlaintext": True}})


def with_key_ids(values: dict) -> dict:
    """`values` with a key id for each region of config.kms.regions (the
    chart's three by default) unless they give key_ids: the chart has no
    default key ids, and most checks are about other things."""
    kms = values.get("config", {}).get("kms", {})
    if "key_ids" in kms.get("aws", {}):
        return values
    regions = kms.get("regions", DEFAULT_REGIONS)
    return deep_merge(values, {"config": {"kms": {"aws": {"key_ids": {r: "alias/rkms" for r in regions}}}}})


def render(values: dict, plaintext: bool = True) -> dict[str, str]:
    """The chart rendered as for `helm install`: template path -> text.
    `plaintext`: accept plain HTTP (see `plaintext_ok`)."""
    values = with_key_ids(values)
    return Chart.load(str(CHART)).render(
        plaintext_ok(values) if plaintext else values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise CheckFailed(f"expected one {kind}{' ' + name if name else ''}, found {len(hits)}")
    return hits[0]


def server_deployment(docs: list[dict]) -> dict:
    return find(docs, "Deployment")


DEFAULT_REGIONS = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["kms"]["regions"]

# Value sets the chart is checked with (with_key_ids adds key ids).
VALUE_SETS = {
    "defaults": {},
    "all-on": load_values("values-all-on.yaml"),
    "token-sources": load_values("values-token-sources.yaml"),
}

# Further value sets whose rendered config.toml must pass check-config: an
# IPv6 listen address, and region sets other than the default three (one
# region: min_regions_on_create becomes 1).
CONFIG_VALUE_SETS = {
    "listenAddress ::": {"listenAddress": "::"},
    "two of the default regions": {"config": {"kms": {"regions": ["us-east-1", "us-west-2"]}}},
    "one region": {"config": {"kms": {"regions": ["us-east-1"]}}},
    "other regions": {"config": {
        "kms": {"regions": ["ap-southeast-2", "eu-central-1"],
                "aws": {"key_ids": {"ap-southeast-2": "alias/rkms", "eu-central-1": "alias/rkms"}}},
        "store": {"dynamodb": {"region": "ap-southeast-2"}}}},
}


class Checker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.results: list[tuple[str, str]] = []
        self.work = Path(tempfile.mkdtemp(prefix="rkms-deploy-check-"))
        self._rendered: dict[str, dict[str, str]] = {}

    def rendered(self, value_set: str) -> dict[str, str]:
        if value_set not in self._rendered:
            values = VALUE_SETS[value_set] if value_set in VALUE_SETS else CONFIG_VALUE_SETS[value_set]
            self._rendered[value_set] = render(values)
        return self._rendered[value_set]

    def check(self, name: str, fn, *a) -> None:
        try:
            detail = fn(*a)
            status = "PASS"
        except Skipped as e:
            status, detail = "SKIP", str(e)
        except CheckFailed as e:
            status, detail = "FAIL", str(e)
        except Exception:  # a crash in a check is a failure of that check
            status, detail = "FAIL", "".join(traceback.format_exc(limit=-1).splitlines(True)[-4:])
        self.results.append((status, name))
        line = f"{status}  {name}"
        if detail and status != "FAIL":
            line += f": {detail}"
        print(line, flush=True)
        if status == "FAIL":
            print("      " + str(detail).strip().replace("\n", "\n      "), flush=True)

    # ----- image -----

    def hadolint(self) -> str:
        exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
        if not exe:
            raise CheckFailed("hadolint not found in the venv")
        run([exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")])
        return "no findings"

    def dockerfile_contract(self) -> str:
        text = (ROOT / "Dockerfile").read_text()
        problems = []
        required = {
            r"cargo build --release --locked": "a --locked release build",
            r"(?m)^FROM gcr\.io/distroless/cc-debian12:nonroot\s*$": "the distroless nonroot base",
            r"(?m)^USER 65532:65532\s*$": "a non-root USER",
            r"(?m)^EXPOSE 8080 9090\s*$": "EXPOSE 8080 9090",
            r"(?m)^STOPSIGNAL SIGTERM\s*$": "STOPSIGNAL SIGTERM",
            r'(?m)^HEALTHCHECK .*\n?.*"healthcheck"': "a HEALTHCHECK running `rkms healthcheck`",
            r'(?m)^VOLUME \["/var/lib/rkms"\]': "the /var/lib/rkms volume",
        }
        for pattern, what in required.items():
            if not re.search(pattern, text):
                problems.append(f"missing {what}")
        forbidden = {
            r"(?m)^COPY\s+tests": "tests copied into the build",
            r"RKMS__SERVER__LISTEN": "an ENV override of server.listen (it would silently override a mounted config)",
        }
        for pattern, what in forbidden.items():
            if re.search(pattern, text):
                problems.append(what)
        # The dependency layer is built before the sources are copied.
        stub = text.find("cargo build")
        copy_src = text.find("COPY src")
        if not (0 <= stub < copy_src):
            problems.append("the dependency layer must be built before `COPY src`")
        ignore = (ROOT / ".dockerignore").read_text().split()
        if "*" not in ignore:
            problems.append(".dockerignore must exclude everything not named")
        if problems:
            raise CheckFailed("; ".join(problems))
        return "locked build, dependency layer, distroless nonroot, healthcheck"

    def checkov_dockerfile(self) -> str:
        return self.checkov(["-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile"])

    def image_config(self) -> str:
        config = str(DEPLOY / "image-config.toml")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RKMS")}
        env["RKMS_TOKEN"] = "demo-token-for-the-image-check"
        run([self.args.rkms, "check-config", "--config", config], env=env)
        del env["RKMS_TOKEN"]
        proc = subprocess.run([self.args.rkms, "check-config", "--config", config], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0 or "RKMS_TOKEN" not in proc.stderr:
            raise CheckFailed(f"without RKMS_TOKEN check-config must fail naming it; got {proc.returncode}: {proc.stderr.strip()}")
        return f"accepted with RKMS_TOKEN; without it: {proc.stderr.strip()}"

    # ----- Helm chart -----

    def helm_lint(self, value_set: str) -> str:
        result = lint(str(CHART), plaintext_ok(VALUE_SETS[value_set]), strict=True, namespace=NAMESPACE)
        findings = [m for m in result.get("messages", []) if m.get("severity", 0) >= 2]
        if result.get("errors") or findings:
            raise CheckFailed(json.dumps({"errors": result.get("errors"), "messages": findings}, indent=2))
        infos = [m["error"] for m in result.get("messages", [])]
        return f"{result.get('total_charts_linted')} chart, no warnings" + (f" (info: {'; '.join(infos)})" if infos else "")

    def kube_validate(self, value_set: str) -> str:
        docs = documents(self.rendered(value_set))
        errors, crds = [], []
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                crds.append(doc["kind"])
                continue
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: {e.message} at {list(e.path)}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: no schema ({e})")
        if errors:
            raise CheckFailed("\n".join(errors))
        note = f" ({', '.join(sorted(set(crds)))}: CRDs, no bundled schema)" if crds else ""
        return f"{len(docs) - len(crds)} objects valid against Kubernetes {' and '.join(KUBE_VERSIONS)}{note}"

    def write_manifests(self, value_set: str) -> Path:
        out = self.work / f"manifests-{value_set}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for i, doc in enumerate(documents(self.rendered(value_set))):
            (out / f"{i:02d}-{doc['kind'].lower()}.yaml").write_text(yaml.safe_dump(doc))
        return out

    def checkov(self, target_args: list[str]) -> str:
        if not self.args.checkov or not Path(self.args.checkov).exists():
            raise CheckFailed(f"checkov not found at {self.args.checkov}")
        out = run([self.args.checkov, *target_args, "--skip-download", "--quiet", "--compact",
                   "--config-file", str(DEPLOY / ".checkov.yaml"), "-o", "json"],
                  cwd=self.work, ok_codes=(0, 1))
        reports = json.loads(out[out.index("["):] if out.lstrip().startswith("[") else out[out.index("{"):])
        reports = reports if isinstance(reports, list) else [reports]
        failed, passed, skipped = [], 0, 0
        for report in reports:
            summary = report.get("summary", {})
            passed += summary.get("passed", 0)
            skipped += summary.get("skipped", 0)
            for f in report.get("results", {}).get("failed_checks", []):
                failed.append(f"{f['check_id']} {f['check_name']} ({f.get('resource')}, {f.get('file_path')})")
        if failed:
            raise CheckFailed("\n".join(failed))
        return f"{passed} passed, {skipped} skipped with a reason in deploy/.checkov.yaml or the code"

    def checkov_chart(self, value_set: str) -> str:
        return self.checkov(["-d", str(self.write_manifests(value_set)), "--framework", "kubernetes"])

    def schema_rejects(self) -> str:
        bad = {
            "replicaCount 0": {"replicaCount": 0},
            "an unknown top-level value": {"replicas": 3},
            "auth.mode none without allow_unauthenticated": {"auth": {"mode": "none", "clients": []}},
            "a short client token": {"auth": {"clients": [{"name": "app", "ids": ["*"], "token": "short"}]}},
            "a client without ids": {"auth": {"clients": [{"name": "app"}]}},
            "server.listen in config (the chart owns it)": {"config": {"server": {"listen": "0.0.0.0:1"}}},
            "[auth] in config (the chart owns it)": {"config": {"auth": {"mode": "none"}}},
            "the sqlite store": {"config": {"store": {"backend": "sqlite"}}},
            "the local KMS": {"config": {"kms": {"provider": "local"}}},
            "maxUnavailable 0": {"podDisruptionBudget": {"maxUnavailable": 0}},
            "a malformed IRSA role ARN": {"serviceAccount": {"irsaRoleArn": "rkms-role"}},
            "a grace period shorter than the drain": {"terminationGracePeriodSeconds": 10},
            "IRSA on a service account the chart does not create": {
                "serviceAccount": {"create": False, "irsaRoleArn": "arn:aws:iam::123456789012:role/rkms"}},
            "mtls without TLS": {"auth": {"mode": "mtls", "clients": [{"name": "a.example", "ids": ["*"]}]}},
            # RKMS__ overrides in extraEnv would bypass the guards above.
            "extraEnv RKMS__ overrides to sqlite and the local KMS": {"replicaCount": 3, "extraEnv": [
                {"name": "RKMS__STORE__BACKEND", "value": "sqlite"}, {"name": "RKMS__KMS__PROVIDER", "value": "local"}]},
            "extraEnv RKMS__AUTH__MODE=none": {"extraEnv": [{"name": "RKMS__AUTH__MODE", "value": "none"}]},
            "extraEnv rkms__ in lower case": {"extraEnv": [{"name": "rkms__cache__ttl_seconds", "value": "0"}]},
            "extraEnv RKMS__ from a Secret": {"extraEnv": [
                {"name": "RKMS__SERVER__LISTEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}]},
            # A token-mode client's name is a Secret key and a file name.
            "a token-mode client name with ':'": {"auth": {"clients": [{"name": "app:prod", "ids": ["*"]}]}},
            "a token-mode client name with '/'": {"auth": {"clients": [{"name": "team/app", "ids": ["*"]}]}},
            "a token-mode client name '..'": {"auth": {"clients": [{"name": "..", "ids": ["*"]}]}},
            "a token-mode spiffe:// client name": {"auth": {"clients": [{"name": "spiffe://example.org/app", "ids": ["*"]}]}},
            # A region of kms.regions without a key id: the chart has no default.
            "a region without a key id": {"config": {"kms": {"regions": ["us-east-1", "ap-southeast-2"],
                                                               "aws": {"key_ids": {"us-east-1": "alias/rkms"}}}}},
            # A mistyped region in key_ids is not filled in from elsewhere.
            "a mistyped region in key_ids": {"config": {"kms": {"aws": {"key_ids": {
                "us-east-1": "alias/a", "us-west-2": "alias/a", "eu-west1": "alias/a"}}}}},
            "an endpoint for a region not listed": {"config": {"kms": {"aws": {"endpoints": {"ap-south-1": "https://kms.example"}}}}},
            "min_regions_on_create above the regions": {"config": {"kms": {"regions": ["us-east-1"], "min_regions_on_create": 2}}},
            # Pairs rkms refuses at start.
            "cache.max_entries 0 with a cache": {"config": {"cache": {"max_entries": 0}}},
            "stale_if_error without a cache": {"config": {"cache": {"ttl_seconds": 0, "stale_if_error_seconds": 60}}},
            "request_timeout_ms past a day": {"config": {"server": {"request_timeout_ms": 1000000000}}},
            "an mtls client with token_sha256": {"tls": {"enabled": True, "secretName": "rkms-tls"}, "auth": {
                "mode": "mtls", "clients": [{"name": "a.example", "ids": ["*"], "token_sha256": "ab" * 32}]}},
            "one port for the API and metrics": {"containerPorts": {"http": 8080, "metrics": 8080}},
            "verifyClients without TLS": {"tls": {"verifyClients": True}},
            "revocation lists without TLS": {"tls": {"clientCrl": {"secretName": "crl"}}},
            "revocation lists without client certificates": {"tls": {"enabled": True, "secretName": "rkms-tls",
                                                                     "clientCrl": {"secretName": "crl"}}},
            "one Service port for the API and metrics": {"service": {"port": 8080, "metricsPort": 8080}},
            "a ServiceMonitor without metrics": {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
            "a probe on the metrics port without metrics": {"metrics": {"enabled": False},
                                                            "probes": {"liveness": {"httpGet": {"path": "/healthz", "port": "metrics"}}}},
            # <fullname>-client (a label key) and <fullname>-preflight (a Job).
            "a 57-character full name": {"fullnameOverride": "a" * 57},
            "a 54-character full name with the preflight Job": {"fullnameOverride": "a" * 54, "preflightJob": {"enabled": True}},
        }
        accepted = []
        for what, values in bad.items():
            try:
                render(values)
                accepted.append(what)
            except Exception:
                pass
        # Plain HTTP unless asked for: data keys and tokens in the clear.
        for what, values in {
            "the defaults (plain HTTP, not allowed)": {},
            "tls.enabled false, allowPlaintext false": {"tls": {"enabled": False, "allowPlaintext": False}},
        }.items():
            try:
                render(values, plaintext=False)
                accepted.append(what)
            except Exception:
                pass
        if accepted:
            raise CheckFailed("rendered although invalid: " + "; ".join(accepted))
        # The guards refuse no more than they should.
        good = {
            "an extraEnv RKMS_ token variable (one underscore)": {
                "extraEnv": [{"name": "RKMS_APP_TOKEN", "value": "x"}],
                "auth": {"clients": [{"name": "app", "ids": ["*"], "token_env": "RKMS_APP_TOKEN"}]}},
            "a token_env client named with ':' and '/'": {
                "extraEnv": [{"name": "APP_TOKEN", "value": "x"}],
                "auth": {"clients": [{"name": "spiffe://example.org/app", "ids": ["*"], "token_env": "APP_TOKEN"}]}},
            "an mtls spiffe:// client": {
                "tls": {"enabled": True, "secretName": "rkms-tls"},
                "auth": {"mode": "mtls", "clients": [{"name": "spiffe://example.org/ns/a/sa/b", "ids": ["*"]}]}},
        }
        good["plain HTTP allowed on purpose"] = {"tls": {"allowPlaintext": True}}
        refused = []
        for what, values in good.items():
            try:
                # As given when they set tls themselves.
                render(values, plaintext="tls" not in values)
            except Exception as e:
                refused.append(f"{what}: {str(e).strip().splitlines()[-1]}")
        if refused:
            raise CheckFailed("refused although valid: " + "; ".join(refused))
        return f"{len(bad) + 2} invalid value sets refused, {len(good)} valid ones near them rendered"

    def pod_hardening(self, value_set: str) -> str:
        docs = documents(self.rendered(value_set))
        pods = []
        for doc in docs:
            spec = doc.get("spec", {})
            if doc["kind"] == "Pod":
                pods.append((f"Pod/{doc['metadata']['name']}", spec))
            elif doc["kind"] in ("Deployment", "Job"):
                pods.append((f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]))
        problems = []
        for name, pod in pods:
            if pod.get("automountServiceAccountToken") is not False:
                problems.append(f"{name}: automountServiceAccountToken is not false")
            psc = pod.get("securityContext", {})
            if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{name}: pod securityContext needs runAsNonRoot and seccomp RuntimeDefault")
            for c in pod["containers"]:
                sc = c.get("securityContext", {})
                want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
                for key, value in want.items():
                    if sc.get(key) is not value:
                        problems.append(f"{name}/{c['name']}: {key} is not {value}")
                if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                    problems.append(f"{name}/{c['name']}: capabilities do not drop ALL")
                if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    problems.append(f"{name}/{c['name']}: seccompProfile is not RuntimeDefault")
                if "memory" not in c.get("resources", {}).get("limits", {}):
                    problems.append(f"{name}/{c['name']}: no memory limit")
        if problems:
            raise CheckFailed("\n".join(problems))
        return f"{len(pods)} pod specs non-root, read-only, no capabilities, seccomp, no API token"

    def deployment_contract(self, value_set: str) -> str:
        docs = documents(self.rendered(value_set))
        values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), VALUE_SETS[value_set])
        dep = server_deployment(docs)
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        container = spec["containers"][0]
        problems = []
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = pod["metadata"].get("annotations", {})
        if "checksum/config" not in annotations:
            problems.append("no checksum/config annotation on the pod template")
        if "prometheus.io/port" in annotations and int(annotations["prometheus.io/port"]) != ports.get("metrics"):
            problems.append(f"prometheus.io/port {annotations['prometheus.io/port']} is not the metrics port {ports.get('metrics')}")
        for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/healthz")):
            got = container.get(probe, {}).get("httpGet", {})
            if not got or (path and got.get("path") != path):
                problems.append(f"{probe} must GET {path or 'a health path'}")
        sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace_ms = values["config"]["server"]["shutdown_grace_ms"]
        if not spec["terminationGracePeriodSeconds"] > sleep + grace_ms / 1000:
            problems.append(f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} is not above preStop {sleep}s + shutdown_grace_ms {grace_ms}")
        if sleep <= 0:
            problems.append("no preStop sleep")
        keys = {c["topologyKey"] for c in spec.get("topologySpreadConstraints", [])}
        if not {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys:
            problems.append(f"topology spread must cover zones and nodes, has {sorted(keys)}")
        sa = find(docs, "ServiceAccount")["metadata"]["name"] if values["serviceAccount"]["create"] else None
        if sa and spec["serviceAccountName"] != sa:
            problems.append(f"pods use service account {spec['serviceAccountName']}, the chart creates {sa}")
        svc = find(docs, "Service")
        svc_ports = {p["name"] for p in svc["spec"]["ports"]}
        if not {"http", "metrics"} <= svc_ports:
            problems.append(f"the Service must expose http and metrics, has {sorted(svc_ports)}")
        policy = find(docs, "NetworkPolicy", dep["metadata"]["name"])
        rule_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        if rule_ports != {"http", "metrics"}:
            problems.append(f"NetworkPolicy ingress must admit http and metrics, admits {sorted(rule_ports)}")
        problems += self.test_pod_problems(docs, values)
        if problems:
            raise CheckFailed("\n".join(problems))
        return "probes, preStop and grace period, spread, checksum, metrics port, Service, NetworkPolicy and the helm test pod"

    def probes_and_hook_pods(self) -> str:
        """Probes reach a listener client connections cannot use up (the
        metrics port, plain HTTP) and keep a scheme given; the API port is
        probed over HTTPS under TLS. The preflight and test pods take the
        pod annotations and their own (a mesh sidecar turned off there)."""
        tls = {"tls": {"enabled": True, "secretName": "rkms-tls"}}
        problems = []

        def probes(values: dict) -> dict[str, dict]:
            container = server_deployment(documents(render(values, plaintext="tls" not in values)))["spec"]["template"]["spec"]["containers"][0]
            return {p: container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}

        # (startup and liveness, readiness): port and scheme.
        cases = [
            ("TLS and metrics (the defaults)", tls, ("metrics", "HTTP"), ("http", "HTTPS")),
            ("plain HTTP and metrics", {}, ("metrics", "HTTP"), ("http", "HTTP")),
            ("TLS without metrics", {**tls, "metrics": {"enabled": False}}, ("http", "HTTPS"), ("http", "HTTPS")),
            ("plain HTTP without metrics", {"metrics": {"enabled": False}}, ("http", "HTTP"), ("http", "HTTP")),
            # Schemes given against what the port speaks are corrected: a
            # pod spec copied from kubectl says scheme: HTTP.
            ("TLS, schemes given wrong", deep_merge(tls, {"probes": {
                "startup": {"httpGet": {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}},
                "liveness": {"httpGet": {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}},
                "readiness": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}}}}),
             ("metrics", "HTTP"), ("http", "HTTPS")),
        ]
        for what, values, alive, ready in cases:
            for name, got in probes(values).items():
                want = ready if name == "readinessProbe" else alive
                if (got.get("port"), got.get("scheme")) != want:
                    problems.append(f"{what}: {name} probes port {got.get('port')} scheme {got.get('scheme')}, "
                                    f"expected {want[0]} {want[1]}")
        svc = find(documents(render(tls, plaintext=False)), "Service")
        if svc["spec"]["ports"][0].get("appProtocol") != "https":
            problems.append("under TLS the Service's API port has no appProtocol https")
        docs = documents(render({"podAnnotations": {"team": "keys"}, "podLabels": {"cost": "kms"},
                                 "preflightJob": {"enabled": True, "podAnnotations": {"sidecar.istio.io/inject": "false"}},
                                 "tests": {"podAnnotations": {"sidecar.istio.io/inject": "false"}}}))
        server = server_deployment(docs)["spec"]["template"]["metadata"]
        job = find(docs, "Job")["spec"]["template"]["metadata"]
        test = [d for d in docs if d["kind"] == "Pod"][0]["metadata"]
        if "sidecar.istio.io/inject" in server.get("annotations", {}):
            problems.append("the preflight Job's annotations reached the server pods")
        for name, meta in (("preflight Job pod", job), ("test pod", test)):
            annotations, labels = meta.get("annotations", {}), meta.get("labels", {})
            if annotations.get("team") != "keys" or annotations.get("sidecar.istio.io/inject") != "false":
                problems.append(f"the {name} lacks podAnnotations or its own: {annotations}")
            if labels.get("cost") != "kms":
                problems.append(f"the {name} lacks podLabels: {labels}")
            if labels.get("app.kubernetes.io/name") == server["labels"]["app.kubernetes.io/name"]:
                problems.append(f"the {name} is selected as a server pod")
        if problems:
            raise CheckFailed("\n".join(problems))
        return (f"{len(cases)} TLS, metrics and given-scheme combinations probe the right port and scheme; "
                "hook and test pods take pod annotations and their own")

    @staticmethod
    def test_pod_problems(docs: list[dict], values: dict) -> list[str]:
        """The `helm test` pod exists with or without TLS, speaks the API's
        scheme, and under TLS mounts the CA alone, never the server's key."""
        tests = [d for d in docs if d["kind"] == "Pod"
                 and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        if len(tests) != 1:
            return [f"expected one helm test pod, found {len(tests)}"]
        spec = tests[0]["spec"]
        args = spec["containers"][0]["args"]
        url = args[args.index("--url") + 1]
        tls = values["tls"]["enabled"]
        problems = []
        if not url.startswith("https://" if tls else "http://"):
            problems.append(f"helm test URL {url} does not match tls.enabled={tls}")
        if tls:
            if "--ca" not in args:
                problems.append("helm test under TLS passes no --ca")
            want = values["tests"]["caSecret"] or values["tls"]["secretName"]
            secrets = [v["secret"] for v in spec.get("volumes", []) if "secret" in v]
            if [s["secretName"] for s in secrets] != [want]:
                problems.append(f"helm test pod mounts {[s['secretName'] for s in secrets]}, not the CA's Secret {want}")
            for secret in secrets:
                items = [i["key"] for i in secret.get("items", [])]
                if items != [values["tests"]["caKey"]]:
                    problems.append(f"helm test pod mounts {items or 'the whole Secret'} of {secret['secretName']}, not only the CA")
        return problems

    def service_account_both_ways(self) -> str:
        problems = []
        cases = {
            "create=true": ({}, "rkms", True),
            "create=true, name=keys": ({"serviceAccount": {"name": "keys"}}, "keys", True),
            "create=false, name=shared": ({"serviceAccount": {"create": False, "name": "shared"}}, "shared", False),
            "create=false": ({"serviceAccount": {"create": False}}, "default", False),
        }
        for what, (values, want, created) in cases.items():
            docs = documents(render(values))
            got = server_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
            accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
            if got != want or accounts != ([want] if created else []):
                problems.append(f"{what}: pods use {got!r}, chart creates {accounts}; want {want!r}, created={created}")
        irsa = documents(render({"serviceAccount": {"irsaRoleArn": "arn:aws:iam::123456789012:role/rkms"}}))
        if find(irsa, "ServiceAccount")["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") != "arn:aws:iam::123456789012:role/rkms":
            problems.append("serviceAccount.irsaRoleArn does not annotate the ServiceAccount")
        if problems:
            raise CheckFailed("\n".join(problems))
        return f"{len(cases)} ways named consistently; IRSA annotation set"

    def pdb_allows_eviction(self) -> str:
        docs = documents(render({"replicaCount": 1}))
        replicas = server_deployment(docs)["spec"]["replicas"]
        pdb = find(docs, "PodDisruptionBudget")["spec"]
        if "maxUnavailable" in pdb:
            ok = int(pdb["maxUnavailable"]) >= 1
        else:
            ok = int(pdb["minAvailable"]) < replicas
        if not ok:
            raise CheckFailed(f"replicas={replicas} with {pdb}: a drain could never evict the pod")
        return f"replicas={replicas}, {dict((k, v) for k, v in pdb.items() if k != 'selector')}"

    def secret_stable(self) -> str:
        """Tokens given in values reach the Secret; generated ones are long and random."""
        docs = documents(self.rendered("token-sources"))
        secret = find(docs, "Secret")
        import base64
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        if data != {"app": "example-token-for-the-check-0001"}:
            raise CheckFailed(f"Secret holds {sorted(data)}; want only the file-token client app with its given token")
        generated = base64.b64decode(find(documents(self.rendered("defaults")), "Secret")["data"]["app"]).decode()
        if len(generated) < 32 or not generated.isalnum():
            raise CheckFailed("a generated token must be at least 32 letters and digits")
        return "given tokens kept; generated tokens are 40 random characters (kept on upgrade through lookup)"

    def rendered_config(self, value_set: str) -> str:
        """The config.toml from the rendered ConfigMap passes `rkms check-config`,
        with the Secrets' files laid out as the pod sees them."""
        return self.check_rendered_config(documents(self.rendered(value_set)), value_set)

    def rendered_config_extra(self, value_set: str) -> str:
        """As rendered_config, and the config holds what the values asked for:
        key_ids for exactly kms.regions, listen addresses rkms parses."""
        values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), CONFIG_VALUE_SETS[value_set])
        docs = documents(self.rendered(value_set))
        config = find(docs, "ConfigMap")["data"]["config.toml"]
        regions = values["config"]["kms"]["regions"]
        key_ids = re.search(r"(?ms)^\[kms\.aws\.key_ids\]\n(.*?)(?:\n\n|\Z)", config)
        got = re.findall(r'(?m)^"?([^"=\s]+)"?\s*=', key_ids.group(1)) if key_ids else []
        if sorted(got) != sorted(regions):
            raise CheckFailed(f"kms.aws.key_ids has {sorted(got)}; want exactly kms.regions {sorted(regions)}")
        address = values["listenAddress"]
        host = f"[{address}]" if ":" in address else address
        want = f'listen = "{host}:{values["containerPorts"]["http"]}"'
        if want not in config:
            raise CheckFailed(f"no `{want}` in the rendered config")
        return self.check_rendered_config(docs, re.sub(r"\W+", "-", value_set))

    def check_rendered_config(self, docs: list[dict], label: str) -> str:
        """`rkms check-config` of the rendered ConfigMap's config.toml, with
        the Secrets' files laid out as the pod sees them."""
        config = find(docs, "ConfigMap")["data"]["config.toml"]
        root = self.work / f"secrets-{label}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "tokens").mkdir(parents=True)
        (root / "tls").mkdir()
        import base64
        for secret in (d for d in docs if d["kind"] == "Secret"):
            for key, value in secret.get("data", {}).items():
                (root / "tokens" / key).write_bytes(base64.b64decode(value))
        if "/tls/" in config:
            make_tls_files(root / "tls")
        if "/crl/" in config:
            (root / "crl").mkdir()
            make_crl(root / "tls", root / "crl" / "ca.crl")
        path = self.work / f"config-{label}.toml"
        path.write_text(config.replace(SECRETS_DIR, str(root)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RKMS")}
        for entry in server_deployment(docs)["spec"]["template"]["spec"]["containers"][0].get("env", []):
            # Variables from Secrets get a stand-in token of the right shape.
            env[entry["name"]] = entry.get("value", "stand-in-token-for-the-check")
        out = run([self.args.rkms, "check-config", "--config", str(path)], env=env)
        return f"accepted by {Path(self.args.rkms).name} check-config ({len(out.splitlines())} lines of effective settings)"

    def prometheus_rules(self) -> str:
        promtool = shutil.which("promtool")
        rule = find(documents(self.rendered("all-on")), "PrometheusRule")
        exprs = "\n".join(r.get("expr", "") for g in rule["spec"]["groups"] for r in g["rules"])
        for needed in ('rkms_region_up', 'rkms_region_breaker', 'state="open"',
                       'rkms_http_requests_total', 'status=~"5.."', 'rkms_kms_request_duration_seconds_bucket'):
            if needed not in exprs:
                raise CheckFailed(f"no alert uses {needed}")
        if not promtool:
            raise Skipped("alerts present; promtool not on PATH (`make tools` installs it), rule syntax not checked")
        path = self.work / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        run([promtool, "check", "rules", str(path)])
        tests = self.rule_tests(rule, server_deployment(documents(self.rendered("all-on")))["metadata"]["name"])
        run([promtool, "test", "rules", str(tests)])
        return (f"promtool check rules: {sum(len(g['rules']) for g in rule['spec']['groups'])} rules; "
                "promtool test rules: region alerts fire through breaker probes, a first misconfigured "
                "KMS or store call raises an alert, probes' 503s do not")

    def rule_tests(self, rule: dict, fullname: str) -> Path:
        """promtool unit tests of the alerts, on series as rkms exports them
        (15 s scrapes). A region that is down shows as up while its breaker
        lets a probe through (a moment every kms.breaker_open_ms): the region
        alerts must fire through that. Counters start at zero (rkms shows them
        at start), so a first burst is an increase."""
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                  for g in rule["spec"]["groups"]]
        plain = self.work / "rules-plain.yaml"
        plain.write_text(yaml.safe_dump({"groups": groups}))
        pod = f"{fullname}-5d8f7c9b4-x2bq4"
        at = f'namespace="{NAMESPACE}",pod="{pod}"'
        steps = 80  # 20 minutes of 15 s scrapes
        # Up one scrape in four, each region at another moment: at every
        # scrape some region shows up, while none stays up.
        flapping = [" ".join("1" if (i + shift) % 4 == 0 else "0" for i in range(steps)) for shift in (1, 2, 3)]
        open_mostly = " ".join("0" if i % 4 == 0 else "1" for i in range(steps))
        burst = "0 0 0 0 5 5 5 5 5 5 5 5 5 5"  # from zero, then five refusals once
        series = [
            *({"series": f'rkms_region_up{{{at},region="r{n}"}}', "values": v} for n, v in enumerate(flapping)),
            {"series": f'rkms_region_breaker{{{at},region="r0",state="open"}}', "values": open_mostly},
            {"series": f'rkms_kms_requests_total{{{at},region="r0",op="decrypt",outcome="misconfigured"}}', "values": burst},
            {"series": f'rkms_http_requests_total{{{at},route="/readyz",status="503"}}', "values": f"0+10x{steps}"},
            {"series": f'rkms_store_requests_total{{{at},op="get",outcome="failed"}}', "values": burst},
            {"series": f'rkms_store_requests_total{{{at},op="get",outcome="corrupt"}}', "values": burst},
            {"series": f'rkms_store_requests_total{{{at},op="put_if_absent",outcome="corrupt"}}', "values": f"0x{steps}"},
            {"series": f'rkms_dependency_check_failed{{{at},check="kms.r1"}}', "values": f"0 0 1x{steps}"},
            {"series": f'rkms_http_requests_total{{{at},route="/key",status="200"}}', "values": f"0+10x{steps}"},
            {"series": f'rkms_reload_failed{{{at},source="auth.token_files"}}', "values": f"0 0 0 0 1x{steps}"},
            {"series": f'rkms_reload_failed{{{at},source="server.tls"}}', "values": f"0x{steps}"},
        ]
        # Another pod whose two regions each went down once, at other times:
        # a region was up throughout, which is no page.
        quiet = f'namespace="{NAMESPACE}",pod="{fullname}-5d8f7c9b4-q7kzm"'
        blip = lambda at: " ".join("0" if at <= i < at + 4 else "1" for i in range(steps))  # noqa: E731
        series += [{"series": f'rkms_region_up{{{quiet},region="a"}}', "values": blip(20)},
                   {"series": f'rkms_region_up{{{quiet},region="b"}}', "values": blip(24)}]
        ns = {"namespace": NAMESPACE}
        tests = {
            "rule_files": [str(plain)],
            "evaluation_interval": "15s",
            "tests": [{
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "RkmsNoRegionUp",
                     "exp_alerts": [{"exp_labels": {**ns, "pod": pod, "severity": "critical"}}]},
                    {"eval_time": "7m", "alertname": "RkmsNoRegionUp",
                     "exp_alerts": [{"exp_labels": {**ns, "pod": pod, "severity": "critical"}}]},
                    {"eval_time": "10m", "alertname": "RkmsRegionBreakerOpen",
                     "exp_alerts": [{"exp_labels": {**ns, "region": "r0", "severity": "warning"}}]},
                    {"eval_time": "2m", "alertname": "RkmsKmsMisconfigured",
                     "exp_alerts": [{"exp_labels": {**ns, "region": "r0", "severity": "critical"}}]},
                    {"eval_time": "15m", "alertname": "RkmsHighErrorRatio", "exp_alerts": []},
                    {"eval_time": "8m", "alertname": "RkmsDependencyCheckFailed",
                     "exp_alerts": [{"exp_labels": {**ns, "pod": pod, "check": "kms.r1", "severity": "critical"}}]},
                    {"eval_time": "2m", "alertname": "RkmsStoreMisconfigured",
                     "exp_alerts": [{"exp_labels": {**ns, "op": "get", "severity": "critical"}}]},
                    {"eval_time": "2m", "alertname": "RkmsStoreRecordCorrupt",
                     "exp_alerts": [{"exp_labels": {**ns, "op": "get", "severity": "critical"}}]},
                    {"eval_time": "30m", "alertname": "RkmsStoreRecordCorrupt", "exp_alerts": []},
                    {"eval_time": "20m", "alertname": "RkmsNotScraped", "exp_alerts": []},
                    {"eval_time": "8m", "alertname": "RkmsReloadFailed",
                     "exp_alerts": [{"exp_labels": {**ns, "pod": pod, "source": "auth.token_files", "severity": "warning"}}]},
                ],
            }, {
                # Only another release's pods are scraped: these are missing.
                "interval": "15s",
                "input_series": [{"series": f'rkms_region_up{{namespace="{NAMESPACE}",pod="{fullname}-canary-5d8f7c9b4-x2bq4",region="r0"}}',
                                  "values": f"1x{steps}"}],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "RkmsNotScraped", "exp_alerts": []},
                    {"eval_time": "11m", "alertname": "RkmsNotScraped",
                     "exp_alerts": [{"exp_labels": {**ns, "severity": "warning"}}]},
                ],
            }],
        }
        path = self.work / "rules-test.yaml"
        path.write_text(yaml.safe_dump(tests))
        return path

    def prometheus_rule_selector(self) -> str:
        """The alerts' default series selector matches this release's server
        pods as each way of scraping labels them (and no other release's):
        the pod-annotation scrape (the chart's default; Prometheus's
        kubernetes-pods example job keeps namespace, pod and the pod's labels)
        and a ServiceMonitor (namespace, service, pod, endpoint, job)."""
        problems, checked = [], 0
        cases = {
            "pod annotations (the default)": ({"metrics": {"prometheusRule": {"enabled": True}}}, "annotations"),
            "a ServiceMonitor": ({"metrics": {"scrapeAnnotations": False, "serviceMonitor": {"enabled": True},
                                              "prometheusRule": {"enabled": True}}}, "servicemonitor"),
            "release keys, pod annotations": ({"fullnameOverride": "keys", "metrics": {"prometheusRule": {"enabled": True}}},
                                              "annotations"),
            # Kubernetes cuts <fullname>-<hash>- to 58 characters before the
            # pod's 5-character suffix: the hash is cut short, or gone.
            "a 49-character full name": ({"fullnameOverride": "payments-platform-key-broker-production-eu-west-1",
                                          "metrics": {"prometheusRule": {"enabled": True}}}, "annotations"),
            # Past about 50 characters another release whose name begins with
            # this one's can have pods of the same shape (README says so).
            "a 56-character full name (its own pods only)": (
                {"fullnameOverride": "payments-platform-key-broker-production-eu-west-1-blue12",
                 "metrics": {"prometheusRule": {"enabled": True}}}, "annotations"),
        }
        for what, (values, scrape) in cases.items():
            docs = documents(render(values))
            dep = server_deployment(docs)
            name = dep["metadata"]["name"]
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            pod_annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
            pod = f"{name}-5d8f7c9b4-"[:58] + "x2bq4"
            if scrape == "annotations":
                if pod_annotations.get("prometheus.io/scrape") != "true":
                    problems.append(f"{what}: the pods are not annotated for scraping")
                labels = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod_labels.items()}
                labels.update(namespace=NAMESPACE, pod=pod, instance="10.0.0.1:9090", job="kubernetes-pods")
            else:
                monitor = find(docs, "ServiceMonitor")
                svc = find(docs, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() - svc["metadata"]["labels"].items():
                    problems.append(f"{what}: the ServiceMonitor does not select the Service")
                labels = dict(namespace=NAMESPACE, pod=pod, service=svc["metadata"]["name"], job=svc["metadata"]["name"],
                              endpoint="metrics", container="rkms", instance="10.0.0.1:9090")
            # A pod of another release, <fullname>-canary, in the same namespace.
            other = {k: (v.replace(name, f"{name}-canary") if k in ("service", "job") else v)
                     for k, v in labels.items()}
            other["pod"] = f"{name}-canary-5d8f7c9b4-"[:58] + "x2bq4"
            rule = find(docs, "PrometheusRule")
            for group in rule["spec"]["groups"]:
                for r in group["rules"]:
                    for selector in re.findall(r'rkms_\w+\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}', r.get("expr", "")):
                        matchers = [(n, op, json.loads(f'"{v}"')) for n, op, v in
                                    re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', selector)]
                        release = [m for m in matchers if m[0] not in ("state", "status", "outcome", "route")]
                        checked += 1
                        if not release:
                            problems.append(f"{what}: {r.get('alert')} selects no release labels: {{{selector}}}")
                        elif not all(matches(labels, m) for m in release):
                            problems.append(f"{what}: {{{selector}}} does not match the server pods' series, labelled "
                                            + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())
                                                        if not k.startswith(("helm_", "app_kubernetes_io_version"))))
                        elif "its own pods only" not in what and all(matches(other, m) for m in release):
                            problems.append(f"{what}: {r.get('alert')} {{{selector}}} also matches pod {other['pod']}")
        if problems:
            raise CheckFailed("\n".join(sorted(set(problems))))
        return f"{checked} selectors match the server pods' series with pod annotations and with a ServiceMonitor"

    # ----- Terraform -----

    def terraform_env(self) -> dict:
        """No user CLI config (provider mirrors, credentials), no update check."""
        cli_config = self.work / "terraformrc"
        cli_config.touch()
        return dict(os.environ, TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE=str(cli_config), CHECKPOINT_DISABLE="1")

    def terraform_fmt(self) -> str:
        terraform = shutil.which("terraform")
        if not terraform:
            raise CheckFailed("terraform is not on PATH")
        out = run([terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)], env=self.terraform_env())
        return "formatted" if not out.strip() else out

    def terraform_parse(self) -> str:
        files = sorted(TERRAFORM.rglob("*.tf"))
        files = [f for f in files if ".terraform" not in f.parts]
        for f in files:
            try:
                load_hcl(f)
            except Exception as e:
                raise CheckFailed(f"{f.relative_to(ROOT)}: {e}")
        for module in sorted((TERRAFORM / "modules").iterdir()):
            for f in module.glob("*.tf"):
                if re.search(r'(?m)^provider\s+"', f.read_text()):
                    raise CheckFailed(f"{f.relative_to(ROOT)}: a reusable module must not configure providers")
        return f"{len(files)} files parsed; no provider blocks in modules"

    def iam_policy(self) -> str:
        doc = policy_document(TERRAFORM / "modules" / "access" / "main.tf", "rkms")
        actions = set()
        kms_ok = False
        for st in doc:
            acts = set(st["actions"])
            actions |= acts
            if acts & KMS_ACTIONS and "kms:DescribeKey" not in acts:
                if st.get("dynamic"):
                    continue  # the opt-in legacy Decrypt, checked below
                if acts != KMS_ACTIONS:
                    raise CheckFailed(f"statement {st.get('sid')} mixes {sorted(acts)}")
                kms_ok = has_id_context(st)
                if not kms_ok:
                    raise CheckFailed(f"statement {st.get('sid')} lacks ForAllValues:StringEquals kms:EncryptionContextKeys = rkms:id with a Null guard")
            if "kms:DescribeKey" in acts and acts != {"kms:DescribeKey"}:
                raise CheckFailed("kms:DescribeKey must stand alone (it carries no context)")
            if any(r == "*" for r in st["resources"]):
                raise CheckFailed(f"statement {st.get('sid')} grants on every resource")
        want = KMS_ACTIONS | {"kms:DescribeKey"} | DYNAMODB_ACTIONS
        if actions != want:
            raise CheckFailed(f"actions {sorted(actions)}; want exactly {sorted(want)}")
        legacy = [st for st in doc if st.get("dynamic")]
        if any(set(st["actions"]) != {"kms:Decrypt"} for st in legacy):
            raise CheckFailed("the optional context-free statement may only allow kms:Decrypt")
        return f"exactly {len(want)} actions; {sorted(KMS_ACTIONS)} only with the rkms:id context"

    def key_policy(self) -> str:
        doc = policy_document(TERRAFORM / "modules" / "region-key" / "main.tf", "master_key")
        # Actions an administrator must not get, however spelled (IAM action
        # names are case-insensitive and may use * and ? wildcards):
        # using the key, and kms:CreateGrant, which can give anyone Decrypt.
        forbidden = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
                     "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair", "kms:GenerateMac",
                     "kms:Sign", "kms:CreateGrant"]
        main_tf = (TERRAFORM / "modules" / "region-key" / "main.tf").read_text()
        for policy in ("master_key", "table_key"):
            admin = next(st for st in policy_document(TERRAFORM / "modules" / "region-key" / "main.tf", policy)
                         if st.get("sid") == "KeyAdministration")
            actions = admin["actions"]
            if isinstance(actions, str) and (m := re.fullmatch(r"\$\{local\.(\w+)\}", actions)):
                actions = next((block[m.group(1)] for block in load_hcl(TERRAFORM / "modules" / "region-key" / "main.tf").get("locals", [])
                                if m.group(1) in block), actions)
            if not isinstance(actions, list):
                raise CheckFailed(f"{policy}: cannot read the administrators' actions: {actions!r}")
            for pattern in actions:
                hit = [a for a in forbidden if fnmatch.fnmatchcase(a.lower(), pattern.lower())]
                if hit:
                    raise CheckFailed(f"{policy}: administrators get {pattern}, which allows {', '.join(hit)}")
                if pattern.lower().startswith("kms:create") and pattern.lower() != "kms:createalias":
                    raise CheckFailed(f"{policy}: administrators get {pattern}; of the Create actions only kms:CreateAlias")
            puts = [a for a in actions if fnmatch.fnmatchcase("kms:putkeypolicy", a.lower())]
            if puts and (puts != ["kms:PutKeyPolicy"] or "Break-glass" not in main_tf):
                raise CheckFailed(f"{policy}: administrators get {puts}: only kms:PutKeyPolicy, named alone and commented as break-glass")
        rkms = [st for st in doc if st.get("sid", "").startswith("Rkms") and not st.get("dynamic")]
        wrap = [st for st in rkms if set(st["actions"]) & KMS_ACTIONS]
        if len(wrap) != 1 or set(wrap[0]["actions"]) != KMS_ACTIONS or not has_id_context(wrap[0]):
            raise CheckFailed("rkms must get exactly GenerateDataKey, Encrypt, Decrypt, only with the rkms:id context")
        if not any(st["actions"] == ["kms:DescribeKey"] and not st.get("condition") for st in rkms):
            raise CheckFailed("rkms needs kms:DescribeKey without a context condition (preflight)")
        text = (TERRAFORM / "modules" / "region-key" / "main.tf").read_text()
        for needed in ("enable_key_rotation      = true", "prevent_destroy = true", 'customer_master_key_spec = "SYMMETRIC_DEFAULT"'):
            if needed not in text:
                raise CheckFailed(f"the master key needs {needed}")
        if "default     = 30" not in (TERRAFORM / "modules" / "region-key" / "variables.tf").read_text():
            raise CheckFailed("deletion_window_in_days must default to 30")
        return "admins manage only (no use, no CreateGrant, PutKeyPolicy as break-glass); rkms wraps only with the rkms:id context, DescribeKey for preflight; rotation, 30-day window, prevent_destroy"

    def table_and_trust(self) -> str:
        table = load_hcl(TERRAFORM / "modules" / "table" / "main.tf")
        t = table["resource"][0]["aws_dynamodb_table"]["keys"]
        want = {"billing_mode": "PAY_PER_REQUEST", "hash_key": "id", "deletion_protection_enabled": True}
        for key, value in want.items():
            if t.get(key) != value:
                raise CheckFailed(f"table {key} = {t.get(key)!r}, want {value!r}")
        if t["attribute"][0] != {"name": "id", "type": "S"}:
            raise CheckFailed("the hash key must be id of type S")
        if t["point_in_time_recovery"][0].get("enabled") is not True:
            raise CheckFailed("point-in-time recovery is off")
        sse = t["server_side_encryption"][0]
        if sse.get("enabled") is not True or "kms_key_arn" not in sse:
            raise CheckFailed("encryption at rest must use a customer managed KMS key")
        # Replicas: aws_dynamodb_table_replica (modules/table-replica), never
        # the inline block, which cannot protect a replica from deletion.
        if "replica" in t or "replica" in str(t.get("dynamic", "")):
            raise CheckFailed("the table has an inline replica block: replicas are modules/table-replica")
        lifecycle = t.get("lifecycle", [{}])[0]
        if lifecycle.get("prevent_destroy") is not True or "replica" not in str(lifecycle.get("ignore_changes")):
            raise CheckFailed("the table needs prevent_destroy and ignore_changes = [replica]")
        replica_tf = load_hcl(TERRAFORM / "modules" / "table-replica" / "main.tf")
        r = replica_tf["resource"][0]["aws_dynamodb_table_replica"]["keys"]
        want = {"deletion_protection_enabled": True, "point_in_time_recovery": True}
        for key, value in want.items():
            if r.get(key) != value:
                raise CheckFailed(f"table replica {key} = {r.get(key)!r}, want {value!r}")
        if "kms_key_arn" not in r:
            raise CheckFailed("a table replica must use a customer managed KMS key")
        if r.get("lifecycle", [{}])[0].get("prevent_destroy") is not True:
            raise CheckFailed("a table replica needs prevent_destroy")
        trust = policy_document(TERRAFORM / "modules" / "access" / "main.tf", "irsa_trust")[0]
        variables = {c["variable"].rsplit(":", 1)[-1]: c for c in trust["condition"]}
        if set(variables) != {"sub", "aud"} or variables["aud"]["values"] != ["sts.amazonaws.com"]:
            raise CheckFailed("the IRSA trust policy must check <issuer>:sub and <issuer>:aud = sts.amazonaws.com")
        return "table and replicas: id S, on demand, PITR, deletion protection, CMK, prevent_destroy; IRSA trust checks sub and aud"

    def terraform_config(self) -> str:
        """modules/config renders a config that `rkms check-config` accepts, and
        chart values the chart renders."""
        terraform = shutil.which("terraform")
        if not terraform:
            raise CheckFailed("terraform is not on PATH")
        root = self.work / "tf-config"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        token = root / "app.token"
        token.write_text("example-token-for-the-terraform-check\n")
        # Three regions, the chart's defaults among them, and two that are not:
        # the chart must render key_ids for exactly the module's regions.
        # One served over TLS, one in plain HTTP on purpose (allow_plaintext).
        make_tls_files(root)
        tls = f'tls = {{ cert = "{root}/tls.crt", key = "{root}/tls.key" }}'
        sets = {
            "three": (["us-east-1", "us-west-2", "eu-west-1"], "us-east-1", tls),
            "two": (["ap-southeast-2", "eu-central-1"], "ap-southeast-2", "allow_plaintext = true"),
        }

        def module(name: str, regions: list[str], home: str, serving: str) -> str:
            key_ids = ", ".join(f'"{r}" = "alias/rkms-{r}"' for r in regions)
            return f'''
module "config_{name}" {{
  source       = "{TERRAFORM / 'modules' / 'config'}"
  regions      = {json.dumps(regions)}
  key_ids      = {{ {key_ids} }}
  table_name   = "rkms_keys"
  table_region = "{home}"
  clients      = [{{ name = "app", token_file = "{token}", ids = ["*"], create = true }}]
  {serving}
}}
output "config_toml_{name}" {{ value = module.config_{name}.config_toml }}
output "helm_values_{name}" {{ value = module.config_{name}.helm_values }}
'''
        (root / "main.tf").write_text("".join(module(n, *args) for n, args in sets.items()))
        env = self.terraform_env()
        # Plain HTTP on 0.0.0.0 unasked: a warning (helm_values users need
        # no TLS here), and rkms refuses the config_toml. A region without a
        # key: an error.
        for what, text, said, fails in (
            ("plain HTTP unasked", module("plain", ["us-east-1"], "us-east-1", ""), "allow_plaintext", False),
            ("a region without a key id", module("keyless", ["us-east-1"], "us-east-1", tls).replace(
                'regions      = ["us-east-1"]', 'regions      = ["us-east-1", "eu-west-1"]'), "eu-west-1", True),
        ):
            bad = self.work / f"tf-config-{what.replace(' ', '-')}"
            shutil.rmtree(bad, ignore_errors=True)
            bad.mkdir()
            (bad / "main.tf").write_text(text)
            run([terraform, "init", "-input=false", "-backend=false", "-no-color"], cwd=bad, env=env)
            proc = subprocess.run([terraform, "apply", "-auto-approve", "-input=false", "-no-color", "-state=out.tfstate"],
                                  cwd=bad, env=env, capture_output=True, text=True)
            out = proc.stdout + proc.stderr
            if (proc.returncode != 0) != fails or said not in out:
                raise CheckFailed(f"modules/config with {what}: expected {'an error' if fails else 'a warning'} naming "
                                  f"{said}, got exit {proc.returncode}:\n{out[-800:]}")
            if not fails:
                plain = run([terraform, "output", "-state=out.tfstate", "-raw", "config_toml_plain"], cwd=bad, env=env)
                (bad / "config.toml").write_text(plain)
                refused = subprocess.run([self.args.rkms, "check-config", "--config", str(bad / "config.toml")],
                                         capture_output=True, text=True,
                                         env={k: v for k, v in os.environ.items() if not k.startswith("RKMS")})
                if refused.returncode == 0 or "server.allow_plaintext" not in refused.stderr:
                    raise CheckFailed(f"rkms accepted modules/config's plain-HTTP config_toml: {refused.stderr[-400:]}")
        run([terraform, "init", "-input=false", "-backend=false", "-no-color"], cwd=root, env=env)
        run([terraform, "validate", "-no-color"], cwd=root, env=env)
        run([terraform, "apply", "-auto-approve", "-input=false", "-no-color", "-state=out.tfstate"], cwd=root, env=env)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RKMS")}
        for name, (regions, home, _) in sets.items():
            config = run([terraform, "output", "-state=out.tfstate", "-raw", f"config_toml_{name}"], cwd=root, env=env)
            values = yaml.safe_load(run([terraform, "output", "-state=out.tfstate", "-raw", f"helm_values_{name}"], cwd=root, env=env))
            (root / f"config-{name}.toml").write_text(config)
            run([self.args.rkms, "check-config", "--config", str(root / f"config-{name}.toml")], env=clean)
            # As terraform/README.md installs it: with TLS, and no
            # allowance for plain HTTP (the chart's default refusal).
            with_tls = deep_merge(values, {"tls": {"enabled": True, "secretName": "rkms-tls"}})
            docs = documents(render(with_tls, plaintext=False))
            got = find(docs, "ConfigMap")["data"]["config.toml"]
            for region in regions:
                if f'"{region}" = "alias/rkms-{region}"' not in got:
                    raise CheckFailed(f"{name} regions: the chart did not take the Terraform key id of {region}")
            if 'alias/rkms"' in got or 'table = "rkms_keys"' not in got:
                raise CheckFailed(f"{name} regions: the chart kept a default key id or lost the table:\n{got}")
            self.check_rendered_config(docs, f"terraform-{name}")
        return ("config.toml (TLS, and plain HTTP when allowed) accepted by check-config; plain HTTP unasked warned "
                "of and refused by rkms; a region without a key refused; helm_values for three and for two other regions render in the chart "
                "to configs check-config accepts")

    def provider_constraints(self) -> str:
        """Every required provider has a bounded version constraint, and the
        AWS provider the checks validate with satisfies each."""
        problems, seen = [], 0
        for f in sorted(TERRAFORM.rglob("versions.tf")):
            if ".terraform" in f.parts:
                continue
            for block in load_hcl(f).get("terraform", []):
                for providers in block.get("required_providers", []):
                    for name, spec in providers.items():
                        seen += 1
                        where = f"{f.relative_to(ROOT)}: {name}"
                        constraint = spec.get("version", "") if isinstance(spec, dict) else ""
                        parts = [c.strip() for c in constraint.split(",") if c.strip()]
                        if not any(c.startswith(("<", "~>")) for c in parts):
                            problems.append(f"{where} = {constraint!r} has no upper bound")
                        if name == "aws" and not version_satisfies(AWS_PROVIDER_VERSION, parts):
                            problems.append(f"{where} = {constraint!r} excludes {AWS_PROVIDER_VERSION}, the version checked")
        if problems:
            raise CheckFailed("\n".join(problems))
        return f"{seen} provider constraints bounded; aws admits {AWS_PROVIDER_VERSION}"

    def terraform_validate(self) -> str:
        """`terraform validate` of every module and the example, with the AWS
        provider from a local filesystem mirror (nothing is downloaded)."""
        terraform = shutil.which("terraform")
        if not terraform:
            raise CheckFailed("terraform is not on PATH")
        aws = TF_PROVIDER_MIRROR / "registry.terraform.io" / "hashicorp" / "aws" / AWS_PROVIDER_VERSION
        if not aws.is_dir():
            raise Skipped(f"no AWS provider {AWS_PROVIDER_VERSION} in the mirror {TF_PROVIDER_MIRROR} (set TF_PROVIDER_MIRROR)")
        mirrored = sorted(f"registry.terraform.io/hashicorp/{p.name}"
                          for p in (TF_PROVIDER_MIRROR / "registry.terraform.io" / "hashicorp").iterdir())
        cli_config = self.work / "terraformrc-mirror"
        cli_config.write_text(f'''provider_installation {{
  filesystem_mirror {{
    path    = "{TF_PROVIDER_MIRROR}"
    include = {json.dumps(mirrored)}
  }}
}}
''')
        env = dict(self.terraform_env(), TF_CLI_CONFIG_FILE=str(cli_config))
        copy_root = self.work / "tf-validate"
        shutil.rmtree(copy_root, ignore_errors=True)
        shutil.copytree(TERRAFORM, copy_root, ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "rendered"))
        dirs = sorted({f.parent for f in copy_root.rglob("*.tf")})
        notes = []
        for d in dirs:
            if "hashicorp/local" not in " ".join(mirrored) and strip_local_files(d):
                notes.append(f"{d.relative_to(copy_root)} without its local_file outputs (hashicorp/local is not mirrored)")
            run([terraform, "init", "-input=false", "-backend=false", "-no-color"], cwd=d, env=env)
            run([terraform, "validate", "-no-color"], cwd=d, env=env)
        return (f"{len(dirs)} configurations valid with hashicorp/aws {AWS_PROVIDER_VERSION}"
                + (f"; {'; '.join(notes)}" if notes else ""))

    def checkov_terraform(self) -> str:
        return self.checkov(["-d", str(TERRAFORM), "--framework", "terraform"])

    # ----- driver -----

    def run_all(self) -> int:
        print(f"rkms deploy checks (work dir {self.work})", flush=True)
        self.check("image: hadolint Dockerfile", self.hadolint)
        self.check("image: Dockerfile contract", self.dockerfile_contract)
        self.check("image: checkov Dockerfile", self.checkov_dockerfile)
        self.check("image: deploy/image-config.toml passes check-config", self.image_config)
        for value_set in VALUE_SETS:
            self.check(f"chart[{value_set}]: helm lint --strict", self.helm_lint, value_set)
            self.check(f"chart[{value_set}]: kubernetes-validate --strict", self.kube_validate, value_set)
            self.check(f"chart[{value_set}]: pod hardening", self.pod_hardening, value_set)
            self.check(f"chart[{value_set}]: Deployment contract", self.deployment_contract, value_set)
            self.check(f"chart[{value_set}]: rendered config.toml passes check-config", self.rendered_config, value_set)
        for value_set in CONFIG_VALUE_SETS:
            self.check(f"chart[{value_set}]: rendered config.toml passes check-config", self.rendered_config_extra, value_set)
        for value_set in ("defaults", "all-on"):
            self.check(f"chart[{value_set}]: checkov kubernetes", self.checkov_chart, value_set)
        self.check("chart: values.schema.json and template guards refuse bad values", self.schema_rejects)
        self.check("chart: probes' port and scheme, hook and test pods' annotations", self.probes_and_hook_pods)
        self.check("chart: service account named the same both ways", self.service_account_both_ways)
        self.check("chart: PDB allows an eviction at replicas=1", self.pdb_allows_eviction)
        self.check("chart: client tokens Secret", self.secret_stable)
        self.check("chart: PrometheusRule alerts", self.prometheus_rules)
        self.check("chart: PrometheusRule selects the release's series as scraped", self.prometheus_rule_selector)
        self.check("terraform: fmt -check -recursive", self.terraform_fmt)
        self.check("terraform: python-hcl2 parse", self.terraform_parse)
        self.check("terraform: provider versions bounded", self.provider_constraints)
        self.check("terraform: validate (provider mirror)", self.terraform_validate)
        self.check("terraform: rkms IAM policy is least privilege", self.iam_policy)
        self.check("terraform: master key policy", self.key_policy)
        self.check("terraform: table and IRSA trust", self.table_and_trust)
        self.check("terraform: modules/config renders a valid rkms config", self.terraform_config)
        self.check("terraform: checkov terraform", self.checkov_terraform)
        counts = {s: sum(1 for r, _ in self.results if r == s) for s in ("PASS", "FAIL", "SKIP")}
        if counts["FAIL"] == 0:
            shutil.rmtree(self.work, ignore_errors=True)
        print(f"deploy-check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
        return 1 if counts["FAIL"] else 0


def load_hcl(path: Path):
    """A .tf file parsed by python-hcl2, with the quotes it keeps around
    labels and string literals removed and its bookkeeping keys dropped."""
    with path.open() as fh:
        return normalize(hcl2.load(fh))


def normalize(node):
    if isinstance(node, dict):
        return {unquote(k): normalize(v) for k, v in node.items()
                if k not in ("__is_block__", "__comments__", "__inline_comments__")}
    if isinstance(node, list):
        return [normalize(v) for v in node]
    if isinstance(node, str):
        return unquote(node)
    return node


def policy_document(path: Path, name: str) -> list[dict]:
    """The statements of data.aws_iam_policy_document.<name> in a .tf file;
    a statement from a `dynamic "statement"` block is marked dynamic."""
    parsed = load_hcl(path)
    for block in parsed.get("data", []):
        doc = block.get("aws_iam_policy_document", {}).get(name)
        if doc is None:
            continue
        statements = [dict(s) for s in doc.get("statement", [])]
        for dyn in doc.get("dynamic", []):
            for content in dyn.get("statement", {}).get("content", []):
                statements.append(dict(content, dynamic=True))
        for st in statements:
            if not isinstance(st.get("resources"), list):
                st["resources"] = [str(st.get("resources"))]
        return statements
    raise CheckFailed(f"{path.relative_to(ROOT)}: no aws_iam_policy_document.{name}")


def unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def has_id_context(statement: dict) -> bool:
    conds = {(c["test"], c["variable"]): c["values"] for c in statement.get("condition", [])}
    return (conds.get(("ForAllValues:StringEquals", "kms:EncryptionContextKeys")) == ["rkms:id"]
            and conds.get(("Null", "kms:EncryptionContextKeys")) == ["false"])


def matches(labels: dict[str, str], matcher: tuple[str, str, str]) -> bool:
    """A PromQL label matcher against a series' labels (absent = "")."""
    name, op, value = matcher
    got = labels.get(name, "")
    if op in ("=~", "!~"):
        hit = re.fullmatch(value, got) is not None
        return hit if op == "=~" else not hit
    return (got == value) if op == "=" else (got != value)


def version_satisfies(version: str, constraints: list[str]) -> bool:
    """Terraform version constraints (=, !=, >, >=, <, <=, ~>) for a plain
    x.y.z version."""
    def parse(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.strip().lstrip("v").split("."))
    have = parse(version)
    for c in constraints:
        m = re.fullmatch(r"(~>|>=|<=|!=|>|<|=)?\s*([0-9.]+)", c)
        if not m:
            return False
        op, want = m.group(1) or "=", parse(m.group(2))
        padded = want + (0,) * (len(have) - len(want))
        ok = {
            "=": have == padded, "!=": have != padded, ">": have > padded, ">=": have >= padded,
            "<": have < padded, "<=": have <= padded,
            "~>": have >= padded and have[:len(want) - 1] == want[:len(want) - 1],
        }[op]
        if not ok:
            return False
    return True


def strip_local_files(directory: Path) -> bool:
    """Remove `resource "local_file"` blocks and the hashicorp/local
    requirement from the .tf files of a copied configuration; True when
    there were any."""
    changed = False
    for f in directory.glob("*.tf"):
        text = f.read_text()
        out = text
        for pattern in (r'(?m)^resource "local_file" "[^"]+" \{', r"(?m)^    local = \{"):
            while (m := re.search(pattern, out)):
                depth, i = 0, m.end() - 1
                while True:
                    depth += {"{": 1, "}": -1}.get(out[i], 0)
                    i += 1
                    if depth == 0:
                        break
                out = out[:m.start()] + out[i:]
        if out != text:
            f.write_text(out)
            changed = True
    return changed


def make_tls_files(directory: Path) -> None:
    """A throwaway CA and server certificate, so a config naming
    server.tls files can be checked."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise Skipped("openssl not found: cannot make test certificates")
    d = str(directory)
    run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-days", "1", "-subj", "/CN=rkms-check-ca"])
    run([openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{d}/tls.key", "-out", f"{d}/tls.csr", "-subj", "/CN=rkms.rkms.svc",
         "-addext", "subjectAltName=DNS:rkms.rkms.svc"])
    run([openssl, "x509", "-req", "-in", f"{d}/tls.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-out", f"{d}/tls.crt", "-days", "1", "-copy_extensions", "copyall"])


def make_crl(ca_dir: Path, out: Path) -> None:
    """An empty revocation list signed by the CA of `make_tls_files`."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise Skipped("openssl not found: cannot make a test revocation list")
    (ca_dir / "index.txt").write_text("")
    (ca_dir / "crlnumber").write_text("01\n")
    (ca_dir / "ca.cnf").write_text(f"[ca]\ndefault_ca = d\n[d]\ndatabase = {ca_dir}/index.txt\n"
                                   f"crlnumber = {ca_dir}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n")
    run([openssl, "ca", "-config", str(ca_dir / "ca.cnf"), "-gencrl", "-keyfile", str(ca_dir / "ca.key"),
         "-cert", str(ca_dir / "ca.crt"), "-out", str(out)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rkms", required=True, help="the rkms binary (for check-config)")
    parser.add_argument("--checkov", required=True, help="the checkov executable")
    args = parser.parse_args()
    args.rkms = str(Path(args.rkms).resolve())
    args.checkov = str(Path(args.checkov).resolve())
    return Checker(args).run_all()


if __name__ == "__main__":
    sys.exit(main())
