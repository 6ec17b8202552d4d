#!/usr/bin/env python3
"""Drives a real headless Chromium through the site, like a person would.

Usage: browser.py URL SCREENSHOT.png

Talks the DevTools protocol over Chromium's pipe transport (--remote-debugging-pipe:
JSON messages ended by NUL, Chromium reads fd 3 and writes fd 4), so it needs nothing
but Chromium and the Python standard library. It opens the page, checks that the
stylesheets, the logo, the hero photo and the fingerprinted script loaded, fills in
the form and clicks Post (the page's JavaScript posts to the JSON API), waits for the
new post to show, reloads to see it rendered by the server, saves a screenshot, and
prints what it saw as one JSON object.
Exits non-zero with a message when the browser or the page misbehaves; the assertions
on what it saw are the Rust test's.
"""

import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 90


class Browser:
    def __init__(self, profile, extra_flags=(), env=None):
        chrome = shutil.which("chromium") or "/usr/bin/chromium"
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Move Chromium's ends above 10, so that putting them on 3 and 4 cannot clobber them.
        to_chrome_r, from_chrome_w = (self._high(fd) for fd in (to_chrome_r, from_chrome_w))
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1000,700", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            *extra_flags,
        ]
        # bash (dash takes single-digit fds only) puts the pipe ends on fds 3 and 4,
        # where Chromium expects them.
        cmd = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", cmd, chrome, *flags, "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.events = []

    @staticmethod
    def _high(fd):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def _read_message(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe (did it start?)")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, name, session, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            for i, e in enumerate(self.events):
                if e.get("method") == name and e.get("sessionId") == session:
                    del self.events[i]
                    return e
            self.events.append(self._read_message())
        raise RuntimeError(f"no {name} within {timeout} s")

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def trust_ca(home, ca):
    """An NSS database in `home` (where Chromium on Linux looks for trusted CAs) that
    trusts `ca` for web sites, as an administrator would install a company CA."""
    db = os.path.join(home, ".pki", "nssdb")
    os.makedirs(db, exist_ok=True)
    for args in (["-N", "--empty-password"], ["-A", "-n", "hastack", "-t", "C,,", "-i", ca]):
        subprocess.run(["certutil", "-d", f"sql:{db}", *args], check=True,
                       stdout=subprocess.DEVNULL)


def main():
    # browser.py URL SCREENSHOT [CA_CERT HOST_RESOLVER_RULE]
    url, shot = sys.argv[1], sys.argv[2]
    signal.alarm(DEADLINE_S)
    profile = tempfile.mkdtemp(prefix="hs-chromium-")
    flags, env = [], None
    if len(sys.argv) > 4:
        home = tempfile.mkdtemp(prefix="hs-home-")
        trust_ca(home, sys.argv[3])
        flags.append(f"--host-resolver-rules={sys.argv[4]}")
        env = dict(os.environ, HOME=home)
    b = Browser(profile, flags, env)
    try:
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.call("Page.enable", session=s)

        def load(u):
            b.call("Page.navigate", {"url": u}, session=s)
            b.wait_event("Page.loadEventFired", s)

        def js(expr):
            r = b.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, session=s)
            if "exceptionDetails" in r:
                raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
            return r["result"].get("value")

        load(url)
        seen = {
            "title": js("document.title"),
            "button_color": js("getComputedStyle(document.querySelector('#new-post button')).backgroundColor"),
            "logo_width": js("document.querySelector('header img').naturalWidth"),
            "hero_width": js("document.querySelector('.hero img').naturalWidth"),
            "site_js": js("typeof window.foobarSite"),
        }
        js("""(() => {
            const f = document.getElementById('new-post');
            f.author.value = 'carol';
            f.body.value = 'typed in a real browser';
            f.querySelector('button').click();
            return true;
        })()""")
        end = time.time() + 15
        status = ""
        while time.time() < end:
            status = js("document.getElementById('status').textContent")
            if status:
                break
            time.sleep(0.05)
        seen["status_after_post"] = status
        seen["first_post_after_post"] = js("document.querySelector('#posts li').textContent")
        load(url)
        seen["first_post_after_reload"] = js("document.querySelector('#posts li').textContent")
        png = b.call("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
        print(json.dumps(seen))
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one clear line for the Rust test's failure message
        print(f"browser.py: {e}", file=sys.stderr)
        sys.exit(1)
