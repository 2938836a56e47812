#!/usr/bin/env python3
"""The checks, table and verdict of benches/soak.sh (run by it; exit 1 if a check fails).

Definitions (also in README.md, "Soak"):
- An epoch is the life of one serving ringlb process: the first from t=0, each
  new one from its upgrade. Samples taken while an old process drains (it is
  sampled and summed in) are reported, not checked: the sum holds two
  processes' memory. An epoch's warm-up ends WARM s after its start (epoch 0)
  or after the old process exited (later epochs).
- Baseline of an epoch: descriptors, the median of its last 5 warm-up samples
  (outside the reconnect bursts, below); RSS, the highest warm-up sample. RSS
  swings with every flap cycle (a kill frees a node's connections and the
  allocator hands the pages back within seconds; the reconnects take them
  again): in a 20-minute run each 15 s cycle's peak stayed within 17.8-19.4 MiB
  and its low point 16.1-18.8 MiB, with no trend. A median of 5 samples lands
  anywhere in that swing (one run's baseline sat in a dip, so the ordinary
  peaks read as +9.9%); the warm-up's peak compares like with like. A process
  started by an upgrade serves the same load as the one before it, so its
  baseline is the higher of its own warm-up peak and the previous epoch's
  baseline (it may not grow past what the old process needed + 5%).
- Descriptors are dominated by the held connections (2 per proxied connection).
  The fan-out reconnects a killed node's connections at once, so the count is
  checked at the same point of every flap cycle: all samples except the 2 s
  after each kill (the reconnect burst). RSS is checked on every sample.
- Checked samples (after warm-up): descriptors within +-5% of the baseline
  (fewer would mean connections lost, more a leak); RSS at most the baseline
  + 5%. RSS below the baseline is reported, not failed: a flap's kill frees a
  node's connections at once and the allocator (jemalloc) hands those pages
  back to the kernel within seconds, so RSS dips by up to ~10% until the
  clients are back. Memory going back is not a leak; growth is.
- End: descriptors (least over 5 s once /status shows no open connection) equal
  the idle count measured before the load, exactly; RSS is at most the last
  baseline + 5% (lower is fine: memory returned).
"""
import argparse
import json
import statistics
import sys

TOL = 0.05
KILL_SETTLE = 2


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"_error": f"{path}: {e}"}


def main():
    p = argparse.ArgumentParser()
    for k in ["samples", "events", "fanout", "churn", "status-end", "version", "out",
              "end-alive", "end-active"]:
        p.add_argument("--" + k, default="")
    for k in ["duration", "warm", "connections", "start-fds", "start-rss", "end-fds",
              "end-rss", "fanout-rc", "churn-rc", "reloads", "reload-failures",
              "upgrades", "upgrade-failures", "no-server", "flap-every",
              "churn-concurrency"]:
        p.add_argument("--" + k, type=int, default=0)
    a = p.parse_args()

    samples = []
    with open(a.samples) as f:
        next(f)
        for line in f:
            t, pid, fds, rss, old, ofds, orss = (line.rstrip("\n").split("\t") + [""] * 7)[:7]
            samples.append({"t": int(t), "pid": pid, "fds": int(fds or 0), "rss": int(rss or 0),
                            "old": old.split(), "ofds": int(ofds or 0), "orss": int(orss or 0)})
    events = []
    with open(a.events) as f:
        for line in f:
            t, kind, data = (line.rstrip("\n").split("\t", 2) + ["", ""])[:3]
            events.append((int(t), kind, data))
    fan = load_json(a.fanout)
    churn = load_json(a.churn)
    st = load_json(a.status_end)

    kills = [(t, d) for t, k, d in events if k == "kill"]
    killed_conns = 0
    for _, d in kills:
        w = d.split(":")[0].split()
        if len(w) == 2 and w[1].isdigit():
            killed_conns += int(w[1])
    ups = [(t, d) for t, k, d in events if k == "upgrade"]
    drained = 0
    for _, d in ups:
        w = d.split(":")[0].split()
        if "drains" in w and w[w.index("drains") + 1].isdigit():
            drained += int(w[w.index("drains") + 1])

    def kill_affected(t):
        return any(0 < t - kt <= KILL_SETTLE for kt, _ in kills)

    # Epochs.
    starts = [(0, None)] + [(t, d.split()[2]) for t, d in ups]
    epochs = []
    for i, (t0, pid) in enumerate(starts):
        t1 = starts[i + 1][0] if i + 1 < len(starts) else a.duration + 1
        mine = [s for s in samples if t0 <= s["t"] < t1]
        if i == 0:
            warm_end = a.warm
        else:
            drained_at = next((s["t"] for s in mine if not s["old"]), t1)
            warm_end = drained_at + a.warm
        pre = [s for s in mine if s["t"] < warm_end and not s["old"]]
        pre_f = [s for s in pre if not kill_affected(s["t"])]
        checked = [s for s in mine if s["t"] >= warm_end and not s["old"]]
        base_rss = max(s["rss"] for s in pre) if pre else None
        if base_rss is not None and epochs and epochs[-1]["base_rss"]:
            base_rss = max(base_rss, epochs[-1]["base_rss"])
        base_fds = statistics.median([s["fds"] for s in pre_f[-5:]]) if pre_f else None
        drain = [s for s in mine if s["old"]]
        epochs.append({
            "i": i, "t0": t0, "t1": t1, "warm_end": warm_end, "pid": pid or (mine[0]["pid"] if mine else "?"),
            "base_rss": base_rss, "base_fds": base_fds, "checked": checked,
            "fds_checked": [s for s in checked if not kill_affected(s["t"])],
            "drain_max_fds": max((s["fds"] + s["ofds"] for s in drain), default=None),
            "drain_max_rss": max((s["rss"] + s["orss"] for s in drain), default=None),
            "drain_s": len(drain),
        })

    checks = []  # (name, ok, detail)

    def check(name, ok, detail):
        checks.append((name, bool(ok), detail))

    rows = []
    for e in epochs:
        f = [s["fds"] for s in e["fds_checked"]]
        r = [s["rss"] for s in e["checked"]]
        span = f"{e['t0']}-{min(e['t1'], a.duration)} s (warm-up to {e['warm_end']} s)"
        if not f or not r or e["base_fds"] is None or e["base_rss"] is None:
            rows.append((e, span, None))
            check(f"epoch {e['i']} (pid {e['pid']}): samples after warm-up", False,
                  f"{len(e['checked'])} samples after warm-up: too short to check")
            continue
        bf, br = e["base_fds"], e["base_rss"]
        df = (min(f) / bf - 1, max(f) / bf - 1)
        dr = (min(r) / br - 1, max(r) / br - 1)
        rows.append((e, span, (bf, min(f), max(f), df, br, min(r), max(r), dr, len(f), len(r))))
        check(f"epoch {e['i']} (pid {e['pid']}): descriptors within 5%",
              max(abs(df[0]), abs(df[1])) <= TOL,
              f"baseline {bf:.0f}, {min(f)}..{max(f)} ({df[0]*100:+.2f}% .. {df[1]*100:+.2f}%) over {len(f)} samples")
        check(f"epoch {e['i']} (pid {e['pid']}): RSS at most baseline + 5%",
              dr[1] <= TOL,
              f"baseline {br/1024:.1f} MiB, {min(r)/1024:.1f}..{max(r)/1024:.1f} MiB ({dr[0]*100:+.2f}% .. {dr[1]*100:+.2f}%) over {len(r)} samples")

    last_base_rss = next((e["base_rss"] for e in reversed(epochs) if e["base_rss"]), None)
    check("end: descriptors back to the idle start", a.end_fds == a.start_fds,
          f"{a.end_fds} at the end, {a.start_fds} before the load ({a.end_fds - a.start_fds:+d}); "
          f"open connections at the end: {a.end_active}")
    if last_base_rss:
        check("end: RSS at most the last baseline + 5%", a.end_rss <= last_base_rss * (1 + TOL),
              f"{a.end_rss/1024:.1f} MiB at the end, baseline {last_base_rss/1024:.1f} MiB "
              f"({(a.end_rss/last_base_rss - 1)*100:+.1f}%); idle at the start {a.start_rss/1024:.1f} MiB")

    fk = fan.get("error_kinds", {}) if isinstance(fan, dict) else {}
    ck = churn.get("error_kinds", {}) if isinstance(churn, dict) else {}
    echo_bad = ck.get("echo", {}).get("count", 0)
    check("0 bytes corrupted", fan.get("malformed") == 0 and echo_bad == 0,
          f"fan-out malformed messages {fan.get('malformed', '?')}, churn echo mismatches {echo_bad}")
    check("churn (echo pool): 0 errors", churn.get("errors") == 0 and a.churn_rc == 0,
          f"{churn.get('connections', '?')} connections measured ({churn.get('conn_per_s', '?')}/s), "
          f"errors {churn.get('errors', '?')} {json.dumps({k: v.get('count') for k, v in ck.items()}) if ck else ''}, "
          f"exit {a.churn_rc}" + (f"; {churn['_error']}" if "_error" in churn else ""))
    lost, rec = fan.get("lost"), fan.get("reconnects")
    other = {k: v.get("count") for k, v in fk.items() if not k.startswith("lost") and not k.startswith("reconnect")}
    check("fan-out: every lost connection reconnected, N held at the end",
          a.fanout_rc == 0 and lost is not None and lost == rec and fan.get("open_at_end") == a.connections
          and lost <= killed_conns + drained and not other,
          f"lost {lost} (flap kills reset {killed_conns}, upgrades drained {drained}), reconnects {rec} "
          f"({fan.get('reconnect_failed', '?')} failed attempts, longest {fan.get('reconnect_max_ms', '?')} ms), "
          f"open at end {fan.get('open_at_end', '?')}/{a.connections}, other errors {other or 0}, exit {a.fanout_rc}"
          + (f"; {fan['_error']}" if "_error" in fan else ""))
    st_failed = st.get("reloads", {}).get("failed") if isinstance(st, dict) else None
    check("every reload applied", a.reloads > 0 and a.reload_failures == 0 and st_failed == 0,
          f"{a.reloads} SIGHUPs, {a.reloads - a.reload_failures} seen applied in /status (generation +1, "
          f"last_reload.ok, echo-b weight), {a.reload_failures} not; last process: reloads {st.get('reloads')}")
    check("every upgrade succeeded", a.upgrades > 0 and a.upgrade_failures == 0,
          f"{a.upgrades} upgrades, {a.upgrade_failures} failed: " +
          "; ".join(f"t={t}s {d.split(':')[0]}" for t, d in ups))
    check("ringlb never exited", a.no_server == 0 and a.end_alive == "yes",
          f"{a.no_server} samples without a serving process; serving at the end: {a.end_alive}")

    gone = [f"t={t}s {k} {d}" for t, k, d in events if k in ("backend_exited", "load_exited")]
    check("backends and loads ran to the end", not gone, "; ".join(gone) or "yes")
    ok = all(c[1] for c in checks)
    lines = []
    lines.append(f"{a.version}; {a.duration} s, {a.connections} held connections, churn concurrency "
                 f"{a.churn_concurrency}, {a.reloads} reloads, {len(kills)} node kills (every {a.flap_every} s), "
                 f"{a.upgrades} upgrades; fan-out {fan.get('messages', '?')} messages in its window, "
                 f"{fan.get('messages_per_s', '?')}/s")
    lines.append("")
    lines.append("| epoch (pid) | time | descriptors: baseline, min..max | RSS: baseline, min..max | old process draining |")
    lines.append("|---|---|---|---|---|")
    for e, span, v in rows:
        drain = "—" if e["drain_s"] == 0 else (f"{e['drain_s']} s, at most {e['drain_max_fds']} fds, "
                                                 f"{e['drain_max_rss']/1024:.1f} MiB (both summed)")
        if v is None:
            lines.append(f"| {e['i']} ({e['pid']}) | {span} | too short | too short | {drain} |")
            continue
        bf, fmin, fmax, df, br, rmin, rmax, dr, nf, nr = v
        lines.append(f"| {e['i']} ({e['pid']}) | {span} | {bf:.0f}, {fmin}..{fmax} ({df[0]*100:+.2f}%..{df[1]*100:+.2f}%) "
                     f"| {br/1024:.1f} MiB, {rmin/1024:.1f}..{rmax/1024:.1f} MiB ({dr[0]*100:+.2f}%..{dr[1]*100:+.2f}%) | {drain} |")
    lines.append("")
    lines.append("| check | result | figures |")
    lines.append("|---|---|---|")
    for name, good, detail in checks:
        lines.append(f"| {name} | {'PASS' if good else 'FAIL'} | {detail} |")
    lines.append("")
    lines.append(f"Verdict: {'PASS' if ok else 'FAIL'} ({sum(not c[1] for c in checks)} of {len(checks)} checks failed)")
    text = "\n".join(lines)
    print(text)
    if a.out:
        try:
            with open(a.out, "a") as f:
                f.write("\n## Soak\n\n`benches/soak.sh` (DURATION=" + f"{a.duration}s" + "); definitions in README.md, \"Soak\".\n\n")
                f.write(text + "\n")
        except OSError as e:
            print(f"cannot append to {a.out}: {e}", file=sys.stderr)
            return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
