#!/usr/bin/env python3
"""Names the site's stylesheet and script after their bytes: site.<hex>.css/.js.

    python3 tools/site/fingerprint.py           # rename and update the references
    python3 tools/site/fingerprint.py --check   # only say whether anything is stale

<hex> is the first 8 hex digits of the SHA-256 of the file's bytes, so a name is only
ever used for one content and the files can be cached for ever (a changed file is a
new URL). The source is the fingerprinted file itself: edit
site/static/site.<hex>.css (or .js, or drop in a new site/static/site.css) and rerun
this; it renames the file and rewrites every /static/site.<hex>.<ext> in
crates/app/src/page.rs (the one place the Rust code names them) and in the site's
HTML files. Rerunning on unchanged files changes nothing. Standard library only.

`cargo test -p hastack-app` checks the same thing: every /static/ path the pages name
exists, and each fingerprint matches its file's bytes.
"""

import hashlib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATIC = os.path.join(ROOT, "site", "static")
PAGE_RS = os.path.join(ROOT, "crates", "app", "src", "page.rs")
EXTENSIONS = ("css", "js")


def fingerprint(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:8]


def current(ext):
    """The one site.<hex>.<ext> (or plain site.<ext>) in site/static."""
    pattern = re.compile(r"^site(\.[0-9a-f]{8})?\.%s$" % ext)
    found = sorted(n for n in os.listdir(STATIC) if pattern.match(n))
    if len(found) != 1:
        sys.exit(f"fingerprint.py: want exactly one site.<hex>.{ext} in site/static, found {found or 'none'}")
    return found[0]


def referrers():
    """The files that name the assets: page.rs and the site's HTML."""
    files = [PAGE_RS]
    for dirpath, _, names in os.walk(os.path.join(ROOT, "site")):
        files.extend(os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".html"))
    return files


def main(argv):
    check = "--check" in argv[1:]
    stale = []
    renames = {}
    for ext in EXTENSIONS:
        name = current(ext)
        want = f"site.{fingerprint(os.path.join(STATIC, name))}.{ext}"
        renames[ext] = (name, want)
        if name != want:
            stale.append(f"site/static/{name} should be {want}")
            if not check:
                os.rename(os.path.join(STATIC, name), os.path.join(STATIC, want))
    for path in referrers():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = text
        for ext, (_, want) in renames.items():
            new = re.sub(r"/static/site(\.[0-9a-f]{8})?\.%s\b" % ext, f"/static/{want}", new)
        if new != text:
            stale.append(f"{os.path.relpath(path, ROOT)} names an old asset")
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    for ext, (_, want) in renames.items():
        size = os.path.getsize(os.path.join(STATIC, want if not check else renames[ext][0]))
        print(f"site/static/{want}: {size} bytes")
    for line in stale:
        print(("stale: " if check else "updated: ") + line)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
