# Runs inside the client namespace. Modes: map (each IP, K connections -> node), loop SECS (continuous connects, report failures).
import socket, sys, time, json
def one(ip):
    s = socket.socket(); s.settimeout(2); s.bind((ip, 0))
    try:
        s.connect(("10.216.9.1", 8000)); data = b""
        while not data.endswith(b"\n"):
            c = s.recv(100)
            if not c: break
            data += c
        return data.decode().strip() or "EOF"
    except Exception as e:
        return "ERR " + type(e).__name__ + " " + str(e)
    finally:
        s.close()
ips = ["10.216.3.%d" % i for i in range(100, 150)]
if sys.argv[1] == "map":
    out = {ip: [one(ip) for _ in range(int(sys.argv[2]))] for ip in ips}
    print(json.dumps(out))
else:
    end = time.time() + float(sys.argv[2]); n = 0; fails = []; seen = {}
    while time.time() < end:
        ip = ips[n % len(ips)]; r = one(ip); n += 1
        if r.startswith("ERR") or r == "EOF": fails.append((time.time(), ip, r))
        else: seen.setdefault(ip, set()).add(r)
        time.sleep(0.01)
    print(json.dumps({"tries": n, "fails": fails, "multi": {k: sorted(v) for k, v in seen.items() if len(v) > 1}}))
