"""The BGP lab of tests/bgp.rs (root only; run by it, not by hand).

Namespaces PREFIX-{r,a,b,c}, all in 10.216.0.0/16, nothing in the root namespace:
  c (client, 10.216.3.2 + .100-.149) --- r (router, BIRD2: two eBGP sessions,
  kernel protocol with `merge paths on`, fib_multipath_hash_policy=1)
  r 10.216.1.1 --- a 10.216.1.2 ; r 10.216.2.1 --- b 10.216.2.2
a and b each: 10.216.9.1/32 on lo, ringlb (listener 10.216.9.1:8000, the same
three nodes node-0..2 as ringlb-bench echo --greet on 127.0.0.1:7001-7003 in
the host's namespace, withdraw_delay 4s), BIRD2 announcing 10.216.9.1/32 from a
static protocol `svc` that starts disabled, and a poller (poller.sh) that
enables `svc` while /ready answers 200 and disables it otherwise.

Env: RINGLB, RINGLB_BENCH (binaries), PATIENCE (multiplier), LAB_PREFIX.
Prints the measured times; exits non-zero with the reason on any failed check.
"""
import json, os, signal, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
RINGLB = os.environ["RINGLB"]; BENCH = os.environ["RINGLB_BENCH"]
PAT = float(os.environ.get("PATIENCE", "1"))
P = os.environ["LAB_PREFIX"]
D = tempfile.mkdtemp(prefix="ringlb-bgp-")
procs = []

def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30 * PAT)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout

def ns(n, *cmd): return ["ip", "netns", "exec", f"{P}-{n}", *cmd]

def spawn(name, cmd):
    p = subprocess.Popen(cmd, stdout=open(f"{D}/{name}.log", "a"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append(p); return p

def nexthops():
    out = sh("ip", "-n", f"{P}-r", "route", "show", "10.216.9.1/32")
    return out.count("nexthop via") or (1 if " via " in out else 0)

def wait_hops(k, within):
    t = time.time()
    while time.time() - t < within * PAT:
        if nexthops() == k: return time.time() - t
        time.sleep(0.02)
    raise SystemExit(f"the router's route never had {k} nexthop(s) (has {nexthops()}); logs in {D}")

def setup():
    for n in "rabc":
        sh("ip", "netns", "add", f"{P}-{n}"); sh("ip", "-n", f"{P}-{n}", "link", "set", "lo", "up")
    for (x, xi, y, yi, net) in [("r", "r2a", "a", "a2r", 1), ("r", "r2b", "b", "b2r", 2), ("r", "r2c", "c", "c2r", 3)]:
        sh("ip", "link", "add", f"{P[-6:]}{xi}", "netns", f"{P}-{x}", "type", "veth", "peer", "name", f"{P[-6:]}{yi}", "netns", f"{P}-{y}")
        sh("ip", "-n", f"{P}-{x}", "link", "set", f"{P[-6:]}{xi}", "name", xi)
        sh("ip", "-n", f"{P}-{y}", "link", "set", f"{P[-6:]}{yi}", "name", yi)
        sh("ip", "-n", f"{P}-{x}", "addr", "add", f"10.216.{net}.1/24", "dev", xi); sh("ip", "-n", f"{P}-{x}", "link", "set", xi, "up")
        sh("ip", "-n", f"{P}-{y}", "addr", "add", f"10.216.{net}.2/24", "dev", yi); sh("ip", "-n", f"{P}-{y}", "link", "set", yi, "up")
        sh("ip", "-n", f"{P}-{y}", "route", "add", "default", "via", f"10.216.{net}.1")
    for i in range(100, 150):
        sh("ip", "-n", f"{P}-c", "addr", "add", f"10.216.3.{i}/24", "dev", "c2r")
    for h in "ab":
        sh("ip", "-n", f"{P}-{h}", "addr", "add", "10.216.9.1/32", "dev", "lo")
    sh(*ns("r", "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    sh(*ns("r", "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"))
    with open(f"{D}/r.conf", "w") as f: f.write(open(f"{HERE}/router.conf").read())
    for h, i in (("a", 1), ("b", 2)):
        with open(f"{D}/{h}.conf", "w") as f: f.write(open(f"{HERE}/host.conf").read().replace("NET", str(i)))
    with open(f"{D}/lb.toml", "w") as f: f.write(open(f"{HERE}/ringlb.toml").read())
    for n in "rab":
        sh(*ns(n, "bird", "-c", f"{D}/{n}.conf", "-s", f"{D}/{n}.ctl", "-P", f"{D}/{n}.pid"))
    for h in "ab":
        for k in range(3):
            spawn(f"bench-{h}-{k}", ns(h, BENCH, "--workers", "1", "serve", "echo", "--greet", "--name", f"node-{k}", "--listen", f"127.0.0.1:{7001 + k}"))
        spawn(f"poll-{h}", ["bash", f"{HERE}/poller.sh", f"{P}-{h}", f"{D}/{h}.ctl"])

def lb(h): return spawn(f"lb-{h}", ns(h, RINGLB, "--log-format", "json", "run", "--config", f"{D}/lb.toml"))

def client(*args):
    out = subprocess.run(ns("c", "python3", f"{HERE}/client.py", *args), capture_output=True, text=True, timeout=120 * PAT)
    if out.returncode != 0: raise SystemExit(f"client {args}: {out.stderr}")
    return json.loads(out.stdout)

def served(h):
    return sum('connection closed' in l for l in open(f"{D}/lb-{h}.log"))

def check(ok, what):
    if not ok: raise SystemExit(f"FAILED: {what}; logs in {D}")

def lab():
    setup()
    la, lb_b = lb("a"), lb("b")
    print("both routes announced %.2fs after the start" % wait_hops(2, 30))
    home = {}
    for ip, nodes in client("map", "6").items():
        check(len(set(nodes)) == 1 and not nodes[0].startswith("ERR"), f"{ip} reached {nodes}")
        home[ip] = nodes[0]
    check(len(set(home.values())) == 3, f"every node has clients: {sorted(set(home.values()))}")
    check(served("a") > 0 and served("b") > 0, f"both paths used (a {served('a')}, b {served('b')})")
    print("50 client IPs x 6 connections: each IP on one node; served by a %d, b %d" % (served("a"), served("b")))
    loop = subprocess.Popen(ns("c", "python3", f"{HERE}/client.py", "loop", str(9 * PAT)), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    t0 = time.time(); la.send_signal(signal.SIGTERM)
    w = wait_hops(1, 4)
    check(la.poll() is None, "ringlb a still runs when its route is gone")
    print("a's route withdrawn %.2fs after SIGTERM (withdraw_delay 4s)" % w)
    la.wait(timeout=30 * PAT)
    print("a exited %.2fs after SIGTERM, status %d" % (time.time() - t0, la.returncode))
    check(la.returncode == 0, "a exits 0")
    r = json.loads(loop.communicate(timeout=60 * PAT)[0])
    check(not r["fails"], f"0 of {r['tries']} new connections fail during the withdrawal and stop: {r['fails'][:5]}")
    check(not r["multi"], f"no client on two nodes: {r['multi']}")
    print("while a withdrew and stopped: %d new connections, 0 failed" % r["tries"])
    moved = [ip for ip, n in client("map", "4").items() if set(n) != {home[ip]}]
    check(not moved, f"every client on its node through b alone: {moved}")
    la = lb("a")
    print("a re-announced %.2fs after its restart" % wait_hops(2, 30))
    for p in (la, lb_b): p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    for p in (la, lb_b): p.send_signal(signal.SIGINT)
    for p in (la, lb_b): p.wait(timeout=30 * PAT)

try:
    lab()
finally:
    for p in procs:
        if p.poll() is None: p.kill()
        p.wait()
    for n in "rab":
        try: os.kill(int(open(f"{D}/{n}.pid").read()), signal.SIGTERM)
        except Exception: pass
    for n in "rabc":
        subprocess.run(["ip", "netns", "del", f"{P}-{n}"], capture_output=True)
