//! The admin endpoint: /metrics, /status and the HTML page, against a server in
//! this process. Alone in its test binary: the Prometheus recorder is process-wide.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ringlb::{Config, Server};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    http_request(addr, method, path, "").await
}

/// Send `request` as is and return the status code of the answer.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = s.write_all(request).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every metric in `/metrics` (a `# TYPE` line) has a `# HELP` line with a
/// description, before its `# TYPE` line (the exposition format's order).
fn assert_every_type_has_help(m: &str) {
    let lines: Vec<&str> = m.lines().collect();
    let mut typed = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        typed += 1;
        let name = rest.split(' ').next().unwrap();
        let help = format!("# HELP {name} ");
        let described = lines[..i]
            .iter()
            .rev()
            .take_while(|p| p.starts_with('#'))
            .any(|p| p.starts_with(&help) && p.len() > help.len());
        assert!(
            described,
            "{name} has no # HELP line before its # TYPE:\n{m}"
        );
    }
    assert!(typed >= 10, "only {typed} # TYPE lines:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_page_show_traffic_health_and_reloads() {
    let fleet = Fleet::start(3).await;
    fleet.health[2].set_healthy(false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.toml");
    let text = config_text(
        &fleet.nodes(),
        "",
        &fleet.http_health("100ms", "80ms", 1, 1),
        "[admin]\nlisten = \"127.0.0.1:0\"",
    );
    std::fs::write(&path, &text).unwrap();
    let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
    let admin = server.admin_addr().unwrap();
    let lb = server.local_addr("lb").unwrap();
    let handle = server.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    let pool = handle.pool("p").unwrap();
    let n2 = pool.node("node-2").unwrap();
    eventually(Duration::from_secs(10), "node-2 down", || {
        let down = !n2.is_up() && pool.snapshot().members.len() == 2;
        async move { down }
    })
    .await;
    // Some traffic: 20 clients, 5 bytes each way plus the greeting.
    for i in 0..20 {
        let mut s = connect_from(client_ip(i), lb).await.unwrap();
        read_line(&mut s).await.unwrap();
        s.write_all(b"ping\n").await.unwrap();
        read_line(&mut s).await.unwrap();
    }
    // An invalid reload, then a valid one.
    std::fs::write(&path, text.replace("rise = 1", "rise = 0")).unwrap();
    handle.reload();
    let h = handle.clone();
    eventually(Duration::from_secs(10), "reload refused", || {
        let c = h.reload_counts();
        async move { c == (0, 1) }
    })
    .await;
    let (st, _, body) = http(admin, "GET", "/status").await;
    assert_eq!(st, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["reloads"]["failed"], 1);
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(status["last_reload"]["message"]
        .as_str()
        .unwrap()
        .contains("pools.p.health.rise"));

    std::fs::write(&path, &text).unwrap();
    handle.reload();
    eventually(Duration::from_secs(10), "reload applied", || {
        let c = h.reload_counts();
        async move { c == (1, 1) }
    })
    .await;

    // /metrics
    let (st, head, m) = http(admin, "GET", "/metrics").await;
    assert_eq!(st, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_every_type_has_help(&m);
    for (name, at_least) in [
        ("ringlb_connections_accepted_total{listener=\"lb\"}", 20.0),
        ("ringlb_config_generation", 2.0),
        ("ringlb_reloads_total{result=\"ok\"}", 1.0),
        ("ringlb_reloads_total{result=\"failed\"}", 1.0),
        ("ringlb_node_up{pool=\"p\",node=\"node-2\"}", 0.0),
        ("ringlb_node_up{pool=\"p\",node=\"node-0\"}", 1.0),
        (
            "ringlb_node_transitions_total{pool=\"p\",node=\"node-2\",to=\"down\"}",
            1.0,
        ),
        (
            "ringlb_probes_total{pool=\"p\",node=\"node-2\",result=\"fail\"}",
            1.0,
        ),
        (
            "ringlb_probes_total{pool=\"p\",node=\"node-0\",result=\"ok\"}",
            1.0,
        ),
        ("ringlb_ring_points{pool=\"p\",node=\"node-0\"}", 16384.0),
        ("ringlb_ring_points{pool=\"p\",node=\"node-2\"}", 0.0),
        (
            "ringlb_connection_duration_seconds_count{listener=\"lb\"}",
            20.0,
        ),
        (
            "ringlb_probe_duration_seconds_count{pool=\"p\",node=\"node-0\"}",
            1.0,
        ),
    ] {
        let v = metric(&m, name).unwrap_or_else(|| panic!("{name} missing:\n{m}"));
        assert!(v >= at_least, "{name} = {v}, expected >= {at_least}");
    }
    let to_node: f64 = ["node-0", "node-1"]
        .iter()
        .filter_map(|n| {
            metric(
                &m,
                &format!("ringlb_bytes_total{{pool=\"p\",node=\"{n}\",direction=\"to_node\"}}"),
            )
        })
        .sum();
    assert_eq!(to_node, 100.0, "20 x 'ping\\n'");
    assert!(m.contains("ringlb_connection_duration_seconds_bucket{listener=\"lb\",le=\"0.01\"}"));
    assert_eq!(
        metric(&m, "ringlb_node_up{pool=\"p\",node=\"node-2\"}"),
        Some(0.0)
    );

    // /status
    let (_, _, body) = http(admin, "GET", "/status").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(status["listeners"][0]["name"], "lb");
    assert_eq!(status["listeners"][0]["local_addr"], lb.to_string());
    let pool = &status["pools"][0];
    assert_eq!(pool["name"], "p");
    assert_eq!(pool["nodes_up"], 2);
    let nodes = pool["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let share: f64 = nodes
        .iter()
        .map(|n| n["ring_share_pct"].as_f64().unwrap())
        .sum();
    assert!((share - 100.0).abs() < 0.1, "{share}");
    let down = nodes.iter().find(|n| n["name"] == "node-2").unwrap();
    assert_eq!(down["state"], "down");
    assert_eq!(down["reason"], "http 503 (1 consecutive failures)");
    assert_eq!(down["last_probe"]["ok"], false);
    assert_eq!(down["ring_share_pct"], 0.0);
    let total: u64 = nodes
        .iter()
        .map(|n| n["total_connections"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 20);
    let bytes: u64 = nodes
        .iter()
        .map(|n| n["bytes_to_node"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes, 100);
    for n in nodes {
        assert!(n["since"].as_str().unwrap().ends_with('Z'));
    }

    // The page.
    let (st, head, page) = http(admin, "GET", "/").await;
    assert_eq!(st, 200);
    assert!(head.contains("text/html"));
    assert!(page.contains("<meta http-equiv=\"refresh\""));
    assert!(page.contains("<td class=\"down\">DOWN</td>"), "{page}");
    assert_eq!(page.matches("<td class=\"up\">UP</td>").count(), 2);
    assert!(page.contains("id=\"pool-p\""));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );

    // The charts' history: 6 held connections show up in a sample of every
    // node, node-2 is down in it, and only `?history=1` puts it in /status.
    assert!(
        !body.contains("\"history\""),
        "/status has no history unless asked"
    );
    let mut held = Vec::new();
    for i in 100..106 {
        let mut s = connect_from(client_ip(i), lb).await.unwrap();
        read_line(&mut s).await.unwrap();
        held.push(s);
    }
    let history = eventually_some(
        Duration::from_secs(10),
        "a sample with the 6 held connections",
        || async {
            let (_, _, body) = http(admin, "GET", "/status?history=1").await;
            let v: Value = serde_json::from_str(&body).unwrap();
            let h = v["history"].clone();
            let nodes = h["pools"][0]["nodes"].as_array()?;
            let open: u64 = nodes
                .iter()
                .map(|n| {
                    n["open"]
                        .as_array()
                        .unwrap()
                        .last()
                        .unwrap()
                        .as_u64()
                        .unwrap()
                })
                .sum();
            (open == 6).then_some(h)
        },
    )
    .await;
    assert_eq!(
        (history["interval"].as_str(), history["span"].as_str()),
        (Some("2s"), Some("5m"))
    );
    let ticks = history["at_unix_ms"].as_array().unwrap().len();
    assert!((1..=150).contains(&ticks), "{ticks} samples");
    let nodes = history["pools"][0]["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-0", "node-1", "node-2"]);
    for n in nodes {
        for key in ["open", "misplaced", "state"] {
            assert_eq!(
                n[key].as_array().unwrap().len(),
                ticks,
                "{key} aligned with the ticks"
            );
        }
        let state = n["state"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            state,
            if n["name"] == "node-2" {
                "down"
            } else {
                "in_service"
            }
        );
    }
    let (_, _, page) = http(admin, "GET", "/").await;
    assert_eq!(page.matches("<figure class=\"chart\"").count(), 3, "{page}");
    assert_eq!(page.matches("<polyline class=\"open\"").count(), 3);
    assert!(page.contains(">open 0</text>"), "node-2 holds nothing");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    drop(held);

    // Errors.
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin, "POST", "/status").await.0, 405);
    let (st, _, body) = http(admin, "HEAD", "/status").await;
    assert_eq!((st, body.as_str()), (200, ""));
    // A malformed head (a space inside the path), and a head that is still not
    // complete at 8 KiB (exactly 8 KiB is sent, so the server has read every
    // byte when it answers and its close is a FIN, not a reset).
    assert_eq!(
        raw_status(admin, b"GET /st atus HTTP/1.1\r\n\r\n").await,
        400
    );
    let mut big = b"GET /status HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(8 * 1024, b'a');
    assert_eq!(raw_status(admin, &big).await, 431);
    // The endpoint still answers afterwards.
    assert_eq!(http(admin, "GET", "/status").await.0, 200);

    shutdown.cancel();
    task.await.unwrap();
    // The admin socket is closed with the server.
    assert!(TcpStream::connect(admin).await.is_err());
}
