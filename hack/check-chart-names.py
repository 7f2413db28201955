#!/usr/bin/env python3
"""Reads `helm template` output on stdin and fails when two objects share kind, namespace and
name: helm would create the first and refuse the second ("already exists") at install time."""
import re
import sys

seen = {}
dups = []
for doc in re.split(r"^---\s*$", sys.stdin.read(), flags=re.M):
    kind = re.search(r"^kind:\s*(\S+)", doc, re.M)
    meta = re.search(r"^metadata:\n((?:[ \t]+.*\n?)*)", doc, re.M)
    if not kind or not meta:
        continue
    name = re.search(r"^  name:\s*(\S+)", meta.group(1), re.M)
    namespace = re.search(r"^  namespace:\s*(\S+)", meta.group(1), re.M)
    key = (kind.group(1), namespace.group(1) if namespace else "", name.group(1) if name else "")
    if key in seen:
        dups.append("%s %s/%s" % key)
    seen[key] = True
if dups:
    print("the chart renders these objects twice: " + ", ".join(dups), file=sys.stderr)
    sys.exit(1)
print("chart: %d objects, no name rendered twice" % len(seen))
