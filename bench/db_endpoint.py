#!/usr/bin/env python3
"""The app node's writer endpoint against a direct TLS connection to the primary.

Runs a stack with the PHP example as the team's app (release build, real MariaDB),
then the same clients (PHP PDO, one connection each, queries back to back) twice:
through app1's writer endpoint (plain MySQL to the endpoint, TLS from there to
MariaDB), and straight to the primary over TLS with the same account. Prints, for
each, queries per second, the CPU time of the clients, the endpoint (app1's process)
and the primary's mariadbd, queries per CPU-second of the whole path, and the ratio.

Usage: bench/db_endpoint.py [queries per client, default 20000] [clients, default 4]
Needs mariadb-server, php-cli and php-mysql. Runs on loopback only.
"""
import json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def main():
    for tool in ("mariadbd", "php"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"needs {tool}: apt-get install mariadb-server php-cli php-mysql")
    hastack = os.path.join(ROOT, "target/release/hastack")
    if not os.path.exists(hastack):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="hsdbep.")
    topo = subprocess.run([hastack, "config"], capture_output=True, text=True, check=True).stdout
    net = "127.0.97"
    topo = topo.replace("127.0.0.100", f"{net}.100")
    topo = re.sub(r"127\.0\.([1-5])\.([1-3])", lambda m: f"{net}.{m[1]}{m[2]}", topo)
    topo = re.sub(r'^address = "127\.0\.0\.1:9000"', 'address = ""', topo, flags=re.M)
    # Every port moved by 29000, away from a stack on the defaults.
    topo = re.sub(r"^(port|https_port|admin|web|web_https|app|db|vrrp|raft|dns) = (\d+)",
                  lambda m: f"{m[1]} = {int(m[2]) + 29000}", topo, flags=re.M)
    topo += f"""
[app]
command = ["sh", "start.sh"]
dir = "{ROOT}/examples/guestbook-php"
release = ["php", "migrate.php"]
"""
    path = os.path.join(work, "hastack.toml")
    with open(path, "w") as f:
        f.write(topo)
    up = subprocess.Popen([hastack, "up", "--config", path], cwd=work, stdout=open(os.path.join(work, "up.log"), "w"),
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while "ready in" not in open(os.path.join(work, "up.log")).read():
            if time.time() > deadline or up.poll() is not None:
                sys.exit(open(os.path.join(work, "up.log")).read())
            time.sleep(0.2)
        status = json.loads(subprocess.run([hastack, "status", "--json", "--config", path], cwd=work,
                                           capture_output=True, text=True, check=True).stdout)
        nodes = {n["name"]: n for n in status["nodes"]}
        app1 = nodes["app1"]
        writer = next(e for e in app1["health"]["endpoints"] if e["name"] == "writer")
        primary = writer["target"]
        db = nodes[primary]
        mariadbd = int(subprocess.run(["pgrep", "-f", f"db/{primary}/my.cnf"], capture_output=True,
                                      text=True).stdout.split()[0])
        state = os.path.join(work, ".hastack")
        password = open(os.path.join(state, "secrets/db-app.password")).read().strip()
        pki = os.path.join(state, "pki")
        ep_host, ep_port = writer["address"].rsplit(":", 1)
        # Some rows for the point lookups.
        for i in range(100):
            req = urllib.request.Request(f"http://{net}.100:37080/api/entries", method="POST",
                                         data=json.dumps({"name": "bench", "message": f"row {i}"}).encode(),
                                         headers={"Host": "www.foobar.com", "Content-Type": "application/json"})
            urllib.request.urlopen(req).read()
        time.sleep(1)
        client = os.path.join(ROOT, "bench/db_client.php")
        sides = {
            "endpoint": ([f"mysql:host={ep_host};port={ep_port};dbname=foobar"], [app1["pid"], mariadbd]),
            "direct TLS": ([f"mysql:host={db['address']};port=32306;dbname=foobar"], [mariadbd]),
        }
        print(f"{CLIENTS} clients x {QUERIES} queries each, one connection per client (PHP PDO)")
        print(f"{'query':<8} {'path':<11} {'q/s':>8} {'clients CPU':>12} {'endpoint CPU':>13} {'mariadbd CPU':>13} {'q per CPU-s':>12}")
        for kind in ("select1", "point"):
            results = {}
            for side, (dsn, pids) in sides.items():
                extra = [] if side == "endpoint" else [f"{pki}/ca.crt", f"{pki}/nodes/app1.crt", f"{pki}/nodes/app1.key"]
                before = {p: cpu(p) for p in pids}
                t0 = time.time()
                r0 = os.times()
                procs = [subprocess.Popen(["php", client, dsn[0], "foobar", password, str(QUERIES), kind] + extra)
                         for _ in range(CLIENTS)]
                for p in procs:
                    if p.wait() != 0:
                        sys.exit(f"a client failed ({side})")
                wall = time.time() - t0
                r1 = os.times()
                clients = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
                used = {p: cpu(p) - before[p] for p in pids}
                endpoint = used.get(app1["pid"], 0.0)
                server = used[mariadbd]
                total = clients + endpoint + server
                q = CLIENTS * QUERIES
                results[side] = q / total
                print(f"{kind:<8} {side:<11} {q / wall:>8.0f} {clients:>11.2f}s {endpoint:>12.2f}s {server:>12.2f}s {q / total:>12.0f}")
            print(f"{kind:<8} ratio endpoint / direct TLS (queries per CPU-second of the whole path): "
                  f"{results['endpoint'] / results['direct TLS']:.2f}")
    finally:
        subprocess.run([hastack, "down", "--config", path], cwd=work, capture_output=True)
        up.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
