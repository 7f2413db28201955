#!/usr/bin/env python3
"""Compares the JUnit reports of one hack/conformance.sh run: the same upstream specs against the
host cluster and against a virtual cluster on it.

Writes results.json and results.md into --out: passed / failed / skipped per side and every spec
whose outcome differs, with the reason from the exception list when it has one. Exits 1 when a
spec passed on the host but not in the virtual cluster and the exception list does not explain it
(and 2 on unusable input), so hack/test.sh fails on a new difference.

The exception list (hack/conformance-exceptions.txt): one spec a line, `TEXT<TAB>REASON`, where
TEXT is a part of the spec's name as the report shows it; `#` starts a comment line.
"""
import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

LABELS = re.compile(r" \[[^\[\]]*\bConformance\b[^\[\]]*\]$")


def load_specs(side_dir: Path, focus: re.Pattern, skip: re.Pattern) -> dict:
    """Spec name -> 'passed' | 'failed' | 'skipped', for the specs the focus selects."""
    report = side_dir / "junit.xml"
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError) as e:
        sys.exit(f"conformance-report: cannot read {report}: {e}")
    specs = {}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        # Suite set-up and tear-down nodes are not specs; a failure there fails every spec anyway.
        if not name.startswith("[It] "):
            continue
        # "[It] TEXT [label, label]": the labels repeat tags the text already has.
        name = LABELS.sub("", name[len("[It] "):])
        # As the run selected them: labelled Conformance (ginkgo --label-filter), then the focus.
        if "[Conformance]" not in name or not focus.search(name) or skip.search(name):
            continue
        status = case.get("status", "")
        if case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        elif status not in ("passed", "skipped", "pending"):
            # timedout, interrupted, aborted, panicked: a failure for this comparison
            status = "failed" if status else ("skipped" if case.find("skipped") is not None else "passed")
        specs[name] = "skipped" if status == "pending" else status
    return specs


def load_exceptions(path: Path) -> list:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text, sep, reason = line.partition("\t")
        if not sep or not text.strip() or not reason.strip():
            sys.exit(f"conformance-report: {path}:{number}: expected `SPEC TEXT<TAB>REASON`")
        entries.append((text.strip(), reason.strip()))
    return entries


def explain(name: str, exceptions: list):
    for text, reason in exceptions:
        if text in name:
            return reason
    return None


def counts(specs: dict) -> dict:
    return {s: sum(1 for v in specs.values() if v == s) for s in ("passed", "failed", "skipped")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", type=Path, required=True)
    ap.add_argument("--virtual", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--exceptions", type=Path, required=True)
    ap.add_argument("--focus", required=True)
    ap.add_argument("--skip", required=True)
    ap.add_argument("--mode", default="focus")
    ap.add_argument("--k8s-version", default="")
    args = ap.parse_args()

    focus, skip = re.compile(args.focus), re.compile(args.skip)
    host = load_specs(args.host, focus, skip)
    virtual = load_specs(args.virtual, focus, skip)
    if not host:
        print("conformance-report: the focus selected no spec on the host", file=sys.stderr)
        return 2
    if not any(v == "passed" for v in host.values()):
        # A host that passes nothing (the suite aborted at its start) would hide every difference.
        print(f"conformance-report: no spec passed on the host; see {args.host}/ginkgo.log",
              file=sys.stderr)
        return 2
    exceptions = load_exceptions(args.exceptions)

    def seconds(side: Path):
        try:
            return int((side / "seconds").read_text().strip())
        except (OSError, ValueError):
            return None

    differences = []
    for name in sorted(set(host) | set(virtual)):
        h, v = host.get(name, "missing"), virtual.get(name, "missing")
        if h == v:
            continue
        regression = h == "passed"
        reason = explain(name, exceptions)
        differences.append({"spec": name, "host": h, "virtual": v, "regression": regression,
                            "explained": reason is not None, "reason": reason})
    unexplained = [d for d in differences if d["regression"] and not d["explained"]]
    # Exceptions that no longer match a difference: the list should shrink when vkube improves.
    stale = [text for text, _ in exceptions
             if not any(text in d["spec"] for d in differences) and any(text in n for n in host)]

    result = {
        "kubernetes_version": args.k8s_version, "mode": args.mode,
        "focus": args.focus, "skip": args.skip,
        "host": {**counts(host), "total": len(host), "seconds": seconds(args.host)},
        "virtual": {**counts(virtual), "total": len(virtual), "seconds": seconds(args.virtual)},
        "differences": differences,
        "unexplained": [d["spec"] for d in unexplained],
        "exceptions_not_needed_in_this_run": stale,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")

    hc, vc = result["host"], result["virtual"]
    md = [f"Upstream conformance ({args.k8s_version}, {args.mode}): host vs virtual cluster", "",
          "| | host | virtual |", "| --- | ---: | ---: |"]
    for key in ("passed", "failed", "skipped", "total"):
        md.append(f"| {key} | {hc[key]} | {vc[key]} |")
    md.append(f"| minutes | {(hc['seconds'] or 0) / 60:.1f} | {(vc['seconds'] or 0) / 60:.1f} |")
    md += ["", "| spec | host | virtual | why |", "| --- | --- | --- | --- |"]
    for d in differences:
        why = d["reason"] or ("**not explained**" if d["regression"] else "better in the virtual cluster")
        md.append(f"| {d['spec'].replace('|', '/')} | {d['host']} | {d['virtual']} | {why} |")
    if not differences:
        md.append("| (none) | | | |")
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))

    if unexplained:
        print(f"\nFAIL: {len(unexplained)} spec(s) pass on the host but not in the virtual cluster, "
              "and hack/conformance-exceptions.txt does not explain them:", file=sys.stderr)
        for d in unexplained:
            print(f"  - {d['spec']}  (virtual: {d['virtual']})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
