#!/usr/bin/env python3
"""The live dashboard in a real headless Chromium, as an operator watches it.

Usage: dashboard.py URL SCREENSHOT.png NODE -- KILL_COMMAND...

Opens the dashboard (it keeps itself current over server-sent events), waits until
NODE's card says it is healthy, runs KILL_COMMAND (e.g. `hastack kill web2`), and
waits, on the same page without reloading, until the card says the node is down and
an event names it. Saves a screenshot and prints what it saw as one JSON object; the
assertions are the Rust test's. Uses browser.py's DevTools client (pipe transport).
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import Browser  # noqa: E402


def main():
    sep = sys.argv.index("--")
    url, shot, node = sys.argv[1:4]
    kill = sys.argv[sep + 1:]
    signal.alarm(120)
    profile = tempfile.mkdtemp(prefix="hs-chromium-")
    b = Browser(profile, ["--window-size=1280,900"])
    try:
        target = b.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        b.call("Page.enable", session=s)
        b.call("Page.navigate", {"url": url}, session=s)
        b.wait_event("Page.loadEventFired", s)

        def js(expr):
            r = b.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=s)
            if "exceptionDetails" in r:
                raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
            return r["result"].get("value")

        card = f"document.getElementById('node-{node}')"

        def picture():
            return js(f"""(() => {{
                const c = {card};
                return {{
                    connected: document.body.dataset.connected || '',
                    updated: document.body.dataset.updated || '',
                    vip_holder: (document.getElementById('vip-holder') || {{}}).textContent || '',
                    state: c ? c.dataset.state : null,
                    health: c ? c.dataset.health : null,
                    cards: document.querySelectorAll('[id^="node-"]').length,
                    events: Array.from(document.querySelectorAll('#events li')).map(l => l.textContent),
                }};
            }})()""")

        def wait(what, ok, timeout=30):
            end = time.time() + timeout
            p = picture()
            while time.time() < end:
                p = picture()
                if ok(p):
                    return p
                time.sleep(0.1)
            raise RuntimeError(f"the dashboard never showed {what}; last: {json.dumps(p)}")

        before = wait(f"{node} healthy", lambda p: p["health"] == "ok" and p["connected"] == "yes")
        first_update = before["updated"]
        subprocess.run(kill, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = wait(f"{node} down", lambda p: p["health"] == "down"
                     and any(node in e for e in p["events"]))
        png = b.call("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
        print(json.dumps({"before": before, "after": after, "first_update": first_update}))
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"dashboard.py: {e}", file=sys.stderr)
        sys.exit(1)
