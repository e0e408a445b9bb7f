"""Lints and renders charts/stratus with real Helm (helm-python-sdk, Helm v4
as a library) and validates every rendered object strictly against the
Kubernetes 1.35 schemas (kubernetes-validate). Run by scripts/test in a
virtual environment; exits non-zero on any finding."""

import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

KUBERNETES = "1.35.0"
CHART = Path(__file__).resolve().parent.parent / "charts" / "stratus"

# Default values, and the TLS/Secret values an operator sets.
VALUE_SETS = {
    "defaults": {},
    "tls-and-secrets": {
        "database": {"existingSecret": "pg-credentials", "urlKey": "dsn"},
        "controller": {"agentTls": {"existingSecret": "controller-agent-link"}, "replicas": 3},
        "api": {"replicas": 3, "service": {"type": "LoadBalancer"}},
        "image": {"tag": "v0.1.0"},
        "dns": {"enabled": True},
        "config": {"rdns": {"defaultTemplate": "static-{ip-dashed}.example.net", "secondaries": ["192.0.2.53"]}},
    },
}


def main() -> int:
    failures = []
    for name, values in VALUE_SETS.items():
        report = helm.lint(str(CHART), values, strict=True, namespace="stratus-system")
        for message in report.get("messages", []):
            if message.get("severity", 0) >= 2:
                failures.append(f"{name}: helm lint: {message}")
        failures += [f"{name}: helm lint: {error}" for error in report.get("errors", [])]

        rendered = helm.Chart.load(str(CHART)).render(
            values, name="stratus", namespace="stratus-system", is_install=True
        )
        objects = 0
        for template, manifest in sorted(rendered.items()):
            for document in yaml.safe_load_all(manifest):
                if not document:
                    continue
                objects += 1
                try:
                    kubernetes_validate.validate(document, KUBERNETES, strict=True)
                except Exception as error:  # the library raises several kinds
                    failures.append(f"{name}: {template}: {document.get('kind')}: {error}")
        if objects == 0:
            failures.append(f"{name}: the chart rendered no objects")
        if name == "tls-and-secrets":
            text = "\n".join(rendered.values())
            for wanted in ("secretName: controller-agent-link", "--agent-client-key=", "name: pg-credentials", "- dns\n", "port: 53"):
                if wanted not in text:
                    failures.append(f"{name}: rendered chart lacks {wanted!r}")
        print(f"chart [{name}]: {objects} objects rendered and valid for Kubernetes {KUBERNETES}")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
