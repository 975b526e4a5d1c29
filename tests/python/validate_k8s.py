#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests with kubernetes-validate (PyPI), an implementation
of the API server's OpenAPI schemas nobody on this project wrote. Used by tests/it/deploy.rs.

usage: validate_k8s.py FILE VERSION...   (e.g. 1.25.0 1.37.0)

Every built-in kind is checked in strict mode (unknown fields are errors) against each
VERSION. ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1, prometheus-operator
CRDs) are not in those schemas: they are checked against CRD_SCHEMAS below, a subset of
prometheus-operator's v1 CRD schemas covering the fields these manifests use, with
additionalProperties false so a misspelt field fails. Prints one line per resource; exits 1
on the first failure set.
"""
import sys

import jsonschema
import kubernetes_validate
import yaml

LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": LABELS},
    "required": ["matchLabels"],
    "additionalProperties": False,
}
METADATA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS},
    "required": ["name"],
    "additionalProperties": False,
}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


def crd(spec):
    return {
        "type": "object",
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": METADATA,
            "spec": spec,
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
    }


CRD_SCHEMAS = {
    "ServiceMonitor": crd({
        "type": "object",
        "properties": {
            "selector": SELECTOR,
            "namespaceSelector": {"type": "object"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                    },
                    "required": ["port"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
    }),
    "PrometheusRule": crd({
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": DURATION,
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "alert": {"type": "string", "minLength": 1},
                                    "record": {"type": "string", "minLength": 1},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": DURATION,
                                    "labels": LABELS,
                                    "annotations": LABELS,
                                },
                                "required": ["expr"],
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "additionalProperties": False,
                            },
                        },
                    },
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["groups"],
        "additionalProperties": False,
    }),
}


def main() -> int:
    path, versions = sys.argv[1], sys.argv[2:]
    assert versions, "name at least one Kubernetes version"
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    failed = 0
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CRD_SCHEMAS:
            try:
                jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
                print(f"ok {what} (prometheus-operator v1 subset)")
            except jsonschema.ValidationError as e:
                failed += 1
                print(f"FAIL {what}: {e.message} at {list(e.absolute_path)}")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
                print(f"ok {what} against {v}")
            except kubernetes_validate.ValidationError as e:
                failed += 1
                print(f"FAIL {what} against {v}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failed += 1
                print(f"FAIL {what} against {v}: no schema ({e})")
    print(f"{len(docs)} resources, {failed} failures")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
