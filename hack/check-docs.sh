#!/usr/bin/env bash
# The README and docs/ must stand alone: every relative link names a file inside the repository
# that exists (and, for README anchors, a heading that exists), and nothing points outside it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python3 - "$ROOT" <<'PY'
import os, re, sys
root = os.path.realpath(sys.argv[1])
files = [os.path.join(root, "README.md")] + sorted(
    os.path.join(root, "docs", f) for f in os.listdir(os.path.join(root, "docs")) if f.endswith(".md"))

def anchors(path):
    # GitHub's anchor rule: lower-case, drop punctuation except '-' and '_', spaces become '-'.
    out = set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#+ (.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out

bad = []
for path in files:
    text = open(path, encoding="utf-8").read()
    if "../shared" in text:
        bad.append(f"{os.path.relpath(path, root)}: mentions ../shared, which is not part of the repository")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.realpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        where = f"{os.path.relpath(path, root)}: link {target}"
        if not (dest == root or dest.startswith(root + os.sep)):
            bad.append(f"{where} leaves the repository")
        elif not os.path.exists(dest):
            bad.append(f"{where} names a file that does not exist")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append(f"{where} names a heading that does not exist")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"docs: {len(files)} files, every link resolves inside the repository")
PY
