#!/usr/bin/env python3
"""Reproducible OCI image layout tarballs from a recipe, for hack/images.sh.

    oci-layout.py build RECIPE OUT.tar [--src NAME=PATH]...   prints "REF sha256:MANIFEST_DIGEST"
    oci-layout.py ref RECIPE                                   prints the recipe's image reference
    oci-layout.py check-dockerfile RECIPE DOCKERFILE           fails if the Dockerfile disagrees

The recipe format is described in hack/image-contents.txt (the vkube image's recipe); hack/images.sh
writes the pause and test-workload recipes itself, plus `symlink DEST TARGET`, `line DEST TEXT` (a
line of a generated text file) and `file DEST SRC` lines with SRC a --src name.

Same inputs, same digest: one uncompressed layer (containerd imports it as is; gzip would only
cost CPU time, the tarball never travels), entries sorted, mtime 0, numeric owners without names,
JSON with sorted keys and no timestamps.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

MTIME = 0
# What a Debian base image sets, so `entrypoint vkube` finds /usr/local/bin/vkube as under Docker.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAR_FORMAT = tarfile.PAX_FORMAT


def fail(msg):
    sys.exit(f"oci-layout: {msg}")


class Recipe:
    def __init__(self, path, srcs, resolve=True):
        """resolve=False reads only the recipe's text (for check-dockerfile): sources need not exist."""
        self.path = path
        self.srcs = srcs
        self.resolve = resolve
        self.ref = None
        self.entries = {}  # image path (no leading /) -> (kind, data)
        self.texts = {}  # image path -> lines, for `line` and `account`
        self.accounts = []  # (name, uid, gid, home)
        self.packages = []  # (dest, package) for `file` lines
        self.bins = []  # image paths of `bin` lines
        self.config = {"Env": [], "ExposedPorts": {}}
        with open(path) as f:
            for n, raw in enumerate(f, 1):
                words = raw.split("#", 1)[0].split()
                if words:
                    try:
                        self.directive(words, raw)
                    except (ValueError, IndexError, OSError) as e:
                        fail(f"{path}:{n}: {raw.strip()!r}: {e}")
        if not self.ref:
            fail(f"{path}: no `image REF` line")
        if not any(e.startswith("PATH=") for e in self.config["Env"]):
            self.config["Env"].insert(0, "PATH=" + DEFAULT_PATH)

    def source(self, name):
        if name in self.srcs:
            return self.srcs[name]
        if name.startswith("/"):
            return name
        raise ValueError(f"no --src given for {name!r}")

    def directive(self, w, raw):
        kw, args = w[0], w[1:]
        if kw == "image":
            self.ref = args[0]
        elif kw in ("bin", "file"):
            dest = args[0]
            if kw == "bin":
                self.bins.append(dest)
            elif len(args) > 2:
                self.packages.append((dest, args[2]))
            if not self.resolve:
                return
            src = self.source(args[1])
            if not os.path.isfile(src):
                raise ValueError(f"{src} does not exist (not built yet?)")
            mode = 0o755 if kw == "bin" or os.access(src, os.X_OK) else 0o644
            self.add(dest, "file", (src, mode, 0, 0))
            if kw == "bin":
                for lib in shared_libraries(src):
                    self.add_host_chain(lib)
        elif kw == "dir":
            uid, gid = (int(x) for x in args[2].split(":"))
            self.add(args[0], "dir", (int(args[1], 8), uid, gid))
        elif kw == "symlink":
            self.add(args[0], "symlink", args[1])
        elif kw == "line":
            text = raw.split(None, 2)[2].rstrip("\n")
            self.texts.setdefault(args[0].lstrip("/"), []).append(text)
        elif kw == "account":
            name, uid, gid, home = args[0], int(args[1]), int(args[2]), args[3]
            self.accounts.append((name, uid, gid, home))
        elif kw == "user":
            self.config["User"] = args[0]
        elif kw == "workdir":
            self.config["WorkingDir"] = args[0]
        elif kw == "env":
            self.config["Env"].append(args[0])
        elif kw == "expose":
            self.config["ExposedPorts"][args[0]] = {}
        elif kw in ("entrypoint", "cmd"):
            self.config[kw.capitalize()] = args
        else:
            raise ValueError(f"unknown directive {kw}")

    def add(self, dest, kind, data):
        key = dest.strip("/")
        if not key:
            raise ValueError("empty path")
        old = self.entries.get(key)
        if old and old != (kind, data):
            raise ValueError(f"/{key} is defined twice, differently")
        self.entries[key] = (kind, data)

    def add_host_chain(self, path):
        """Copies a host file to the same path, recreating the symlinks on the way to it (Debian's
        merged /usr: /lib -> usr/lib, /lib64/ld-linux... -> /lib/x86_64-linux-gnu/...)."""
        parts = [p for p in path.split("/") if p]
        cur, i, hops = "/", 0, 0
        while i < len(parts):
            cand = os.path.join(cur, parts[i])
            if os.path.islink(cand):
                hops += 1
                if hops > 40:
                    raise ValueError(f"symlink loop resolving {path}")
                target = os.readlink(cand)
                self.add(cand, "symlink", target)
                base = target if target.startswith("/") else os.path.join(cur, target)
                parts = [p for p in os.path.normpath(base).split("/") if p] + parts[i + 1 :]
                cur, i = "/", 0
                continue
            cur, i = cand, i + 1
        self.add(cur, "file", (cur, 0o755 if os.access(cur, os.X_OK) else 0o644, 0, 0))

    def finish(self):
        """Generated files, and the directories every entry needs."""
        if self.accounts:
            passwd = ["root:x:0:0:root:/root:/sbin/nologin"]
            group = ["root:x:0:"]
            for name, uid, gid, home in self.accounts:
                passwd.append(f"{name}:x:{uid}:{gid}::{home}:/sbin/nologin")
                group.append(f"{name}:x:{gid}:")
            self.texts.setdefault("etc/passwd", []).extend(passwd)
            self.texts.setdefault("etc/group", []).extend(group)
        for key, lines in self.texts.items():
            self.add(key, "bytes", (("\n".join(lines) + "\n").encode(), 0o644))
        for key in list(self.entries):
            parent = os.path.dirname(key)
            while parent:
                kind = self.entries.get(parent, ("dir",))[0]
                if kind != "dir":
                    fail(f"/{key} lies under /{parent}, which is a {kind}")
                self.entries.setdefault(parent, ("dir", (0o755, 0, 0)))
                parent = os.path.dirname(parent)


def shared_libraries(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:  # "not a dynamic executable": static, nothing to add
        return []
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            fail(f"{binary}: {line.strip()}")
    return libs


def tarinfo(name, kind, mode=0o644, uid=0, gid=0, size=0, target=""):
    ti = tarfile.TarInfo(name)
    ti.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}[kind]
    ti.mode, ti.uid, ti.gid, ti.size, ti.linkname = mode, uid, gid, size, target
    ti.mtime, ti.uname, ti.gname = MTIME, "", ""
    return ti


class HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.size += len(b)
        return self.f.write(b)

    def digest(self):
        return "sha256:" + self.h.hexdigest()


def write_layer(recipe, f):
    hw = HashingWriter(f)
    with tarfile.open(fileobj=hw, mode="w|", format=TAR_FORMAT) as tar:
        for key in sorted(recipe.entries):
            kind, data = recipe.entries[key]
            if kind == "dir":
                mode, uid, gid = data
                tar.addfile(tarinfo(key, "dir", mode, uid, gid))
            elif kind == "symlink":
                tar.addfile(tarinfo(key, "symlink", 0o777, target=data))
            elif kind == "bytes":
                content, mode = data
                tar.addfile(tarinfo(key, "file", mode, size=len(content)), _BytesReader(content))
            else:
                src, mode, uid, gid = data
                with open(src, "rb") as sf:
                    size = os.fstat(sf.fileno()).st_size
                    tar.addfile(tarinfo(key, "file", mode, uid, gid, size), sf)
    return hw.digest(), hw.size


class _BytesReader:
    def __init__(self, b):
        self.b, self.pos = b, 0

    def read(self, n=-1):
        n = len(self.b) - self.pos if n < 0 else n
        chunk = self.b[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(recipe, out):
    recipe.finish()
    outdir = os.path.dirname(os.path.abspath(out))
    with tempfile.TemporaryFile(dir=outdir) as layer:
        layer_digest, layer_size = write_layer(recipe, layer)
        config = canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": recipe.config,
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }
        )
        config_desc = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "size": len(config),
        }
        manifest = canonical(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc,
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest,
                        "size": layer_size,
                    }
                ],
            }
        )
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        tag = recipe.ref.rsplit(":", 1)[1] if ":" in recipe.ref.rsplit("/", 1)[-1] else "latest"
        index = canonical(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": manifest_digest,
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        # containerd names the imported image after io.containerd.image.name.
                        "annotations": {
                            "io.containerd.image.name": recipe.ref,
                            "org.opencontainers.image.ref.name": tag,
                        },
                    }
                ],
            }
        )
        blobs = {
            config_desc["digest"]: config,
            manifest_digest: manifest,
        }
        tmp = out + ".tmp"
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w|", format=TAR_FORMAT) as tar:
            tar.addfile(tarinfo("blobs", "dir", 0o755))
            tar.addfile(tarinfo("blobs/sha256", "dir", 0o755))
            names = sorted(list(blobs) + [layer_digest])
            for digest in names:
                name = "blobs/sha256/" + digest.split(":", 1)[1]
                if digest == layer_digest:
                    layer.seek(0)
                    tar.addfile(tarinfo(name, "file", size=layer_size), layer)
                else:
                    tar.addfile(tarinfo(name, "file", size=len(blobs[digest])), _BytesReader(blobs[digest]))
            tar.addfile(tarinfo("index.json", "file", size=len(index)), _BytesReader(index))
            layout = b'{"imageLayoutVersion":"1.0.0"}'
            tar.addfile(tarinfo("oci-layout", "file", size=len(layout)), _BytesReader(layout))
        os.replace(tmp, out)
    print(recipe.ref, manifest_digest)


def dockerfile_final_stage(path):
    """(keyword, argument) pairs of the last stage, continuation lines joined."""
    text = open(path).read()
    text = re.sub(r"\\\n", " ", text)
    stage = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kw, _, arg = line.partition(" ")
        if kw.upper() == "FROM":
            stage = []
        stage.append((kw.upper(), arg.strip()))
    return stage


def check_dockerfile(recipe, path):
    stage = dockerfile_final_stage(path)
    problems = []

    def last(kw):
        vals = [a for k, a in stage if k == kw]
        return vals[-1] if vals else None

    cfg = recipe.config
    if last("USER") != cfg.get("User"):
        problems.append(f"USER is {last('USER')!r}, the recipe says {cfg.get('User')!r}")
    if last("WORKDIR") != cfg.get("WorkingDir"):
        problems.append(f"WORKDIR is {last('WORKDIR')!r}, the recipe says {cfg.get('WorkingDir')!r}")
    denv = {}
    for k, a in stage:
        if k == "ENV":
            for pair in a.split():
                key, _, val = pair.partition("=")
                denv[key] = val
    renv = dict(e.split("=", 1) for e in cfg["Env"] if not e.startswith("PATH="))
    if denv != renv:
        problems.append(f"ENV is {denv}, the recipe says {renv}")
    dports = {p if "/" in p else p + "/tcp" for k, a in stage if k == "EXPOSE" for p in a.split()}
    if dports != set(cfg["ExposedPorts"]):
        problems.append(f"EXPOSE is {sorted(dports)}, the recipe says {sorted(cfg['ExposedPorts'])}")
    for kw in ("ENTRYPOINT", "CMD"):
        val = last(kw)
        parsed = json.loads(val) if val and val.startswith("[") else val
        if parsed != cfg.get(kw.capitalize()):
            problems.append(f"{kw} is {val}, the recipe says {cfg.get(kw.capitalize())}")
    copied = set()
    for k, a in stage:
        if k == "COPY":
            args = [x for x in a.split() if not x.startswith("--")]
            dest = args[-1]
            for src in args[:-1]:
                base = os.path.basename(src)
                copied.add(os.path.join(dest, base) if dest.endswith("/") else dest)
    for b in recipe.bins:
        if b not in copied:
            problems.append(f"no COPY puts {b} in the image")
    runs = " ".join(a for k, a in stage if k == "RUN")
    for dest, pkg in recipe.packages:
        if not re.search(rf"apt-get install[^&;]*\s{re.escape(pkg)}(\s|$)", runs):
            problems.append(f"{dest}: the package {pkg} is not installed")
    for name, uid, gid, home in recipe.accounts:
        m = re.search(rf"useradd\s[^&;]*--uid {uid}\s[^&;]*--home-dir {re.escape(home)}\s[^&;]*\s{name}(\s|$)", runs)
        if not m:
            problems.append(f"no `useradd --uid {uid} ... --home-dir {home} ... {name}`")
    if problems:
        fail(
            f"{path} and {recipe.path} disagree (keep them in step):\n  " + "\n  ".join(problems)
        )


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd = argv[0]
    srcs = {}
    rest = []
    it = iter(argv[1:])
    for a in it:
        if a == "--src":
            name, _, p = next(it).partition("=")
            srcs[name] = p
        else:
            rest.append(a)
    if cmd == "ref":
        # Parsing resolves sources, so only read the ref line here.
        for raw in open(rest[0]):
            w = raw.split("#", 1)[0].split()
            if w and w[0] == "image":
                print(w[1])
                return
        fail(f"{rest[0]}: no `image REF` line")
    if cmd == "build" and len(rest) == 2:
        build(Recipe(rest[0], srcs), rest[1])
    elif cmd == "check-dockerfile" and len(rest) == 2:
        check_dockerfile(Recipe(rest[0], srcs, resolve=False), rest[1])
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
