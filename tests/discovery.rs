//! Backends from DNS against a real DNS server on loopback: dnsmasq, started by
//! each test as a child (`--no-daemon` on a free port), its A records in a
//! hosts file changed at run time (rewrite + SIGHUP). Skipped with a printed
//! reason when dnsmasq is not installed, unless REQUIRE_DNS=1 (CI sets it).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{client_ip, eventually, needs, patient, Kill, Served};
use ringlb::config::{DiscoverConfig, DiscoverType};
use ringlb::demo::backend::{Backend, Mode};
use ringlb::pool::Pool;

fn dnsmasq_bin() -> Option<&'static str> {
    let found = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let missing = found
        .is_none()
        .then(|| "dnsmasq is not installed (apt-get install dnsmasq)".to_string());
    if needs("REQUIRE_DNS", missing) {
        found
    } else {
        None
    }
}

/// A dnsmasq serving `hosts` (a hosts file, re-read on SIGHUP) and `extra`
/// options on 127.0.0.1:port.
struct Dns {
    child: Kill,
    port: u16,
    hosts: PathBuf,
}

impl Dns {
    /// Started and answering (another port if dnsmasq could not bind one:
    /// parallel tests hold ports too).
    async fn start(bin: &str, dir: &Path, hosts: &str, extra: &[String]) -> Dns {
        let path = dir.join("hosts");
        std::fs::write(&path, hosts).unwrap();
        // Readable by the user dnsmasq drops to when started as root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        for _ in 0..20 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    "--local-ttl=1",
                    "--host-record=ready.test,127.0.0.1",
                    &format!("--addn-hosts={}", path.display()),
                ])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let mut dns = Dns {
                child: Kill(child),
                port,
                hosts: path.clone(),
            };
            let cfg = DiscoverConfig {
                name: "ready.test".to_string(),
                kind: DiscoverType::A,
                port: Some(1),
                interval: Duration::from_secs(1),
                resolver: Some(dns.resolver()),
                remove_after: Duration::ZERO,
            };
            let up = common::poll(Duration::from_secs(10), Duration::from_millis(50), || {
                let exited = !matches!(dns.child.0.try_wait(), Ok(None));
                let cfg = cfg.clone();
                async move {
                    if exited {
                        return Some(false);
                    }
                    ringlb::discovery::resolve(&cfg)
                        .await
                        .is_ok()
                        .then_some(true)
                }
            })
            .await;
            if up == Some(true) {
                return dns;
            }
            let _ = dns.child.0.kill();
            let _ = dns.child.0.wait();
        }
        panic!("dnsmasq did not start on any of 20 ports");
    }

    fn resolver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// New A records: rewrite the hosts file and tell dnsmasq to re-read it.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    fn stop(mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// Wait until dnsmasq answers `name`.
async fn answering(dns: &Dns, name: &str, kind: DiscoverType, port: Option<u16>) {
    let cfg = DiscoverConfig {
        name: name.to_string(),
        kind,
        port,
        interval: Duration::from_secs(1),
        resolver: Some(dns.resolver()),
        remove_after: Duration::ZERO,
    };
    eventually(patient(Duration::from_secs(10)), "dnsmasq answers", || {
        let cfg = cfg.clone();
        async move { ringlb::discovery::resolve(&cfg).await.is_ok() }
    })
    .await;
}

/// Backends named by their address on 127.0.0.N, all on one port.
async fn backends(last_octets: &[u8]) -> (u16, Vec<Backend>) {
    'again: for _ in 0..50 {
        // A free port on the first address, released at once, then the same
        // port on every address (another try if one is taken).
        let port = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, last_octets[0]], 0)))
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut v = Vec::new();
        for &o in last_octets {
            let addr = SocketAddr::from(([127, 0, 0, o], port));
            match std::net::TcpListener::bind(addr) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    let l = tokio::net::TcpListener::from_std(l).unwrap();
                    v.push(Backend::from_listener(&addr.to_string(), l, Mode::Greet));
                }
                Err(_) => continue 'again,
            }
        }
        return (port, v);
    }
    panic!("no port free on every backend address");
}

fn hosts(octets: &[u8], name: &str) -> String {
    octets
        .iter()
        .map(|o| format!("127.0.0.{o} {name}\n"))
        .collect()
}

fn config(resolver: SocketAddr, discover: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\non_node_down = \"close\"\nclose_rate = 0\n\
         [pools.p.health]\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\n\
         [pools.p.discover]\nresolver = \"{resolver}\"\ninterval = \"200ms\"\n{discover}"
    )
}

fn names(pool: &Pool) -> Vec<String> {
    pool.nodes().iter().map(|n| n.name.clone()).collect()
}

fn mapping(pool: &Arc<Pool>, n: u32) -> Vec<String> {
    let s = pool.snapshot();
    (0..n)
        .map(|i| {
            s.select(client_ip(i))
                .next()
                .map_or_else(|| "-".to_string(), |n| n.name.clone())
        })
        .collect()
}

#[tokio::test]
async fn records_added_and_removed_move_only_their_clients_and_an_outage_keeps_the_set() {
    let Some(bin) = dnsmasq_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (port, _backends) = backends(&[11, 12, 13, 14]).await;
    let dns = Dns::start(bin, dir.path(), &hosts(&[11, 12, 13], "web.test"), &[]).await;
    answering(&dns, "web.test", DiscoverType::A, Some(port)).await;
    let text = config(
        dns.resolver(),
        &format!("name = \"web.test\"\ntype = \"a\"\nport = {port}\nremove_after = \"0s\"\n"),
    );
    let served = Served::start(&text, "dns.toml", "lb");
    let pool = served.handle.pool("p").unwrap();
    let three: Vec<String> = [11, 12, 13].map(|o| format!("127.0.0.{o}:{port}")).to_vec();
    eventually(
        patient(Duration::from_secs(10)),
        "three nodes from DNS",
        || {
            let ok = names(&pool) == three && pool.snapshot().members.len() == 3;
            async move { ok }
        },
    )
    .await;
    // Real traffic reaches a discovered node, named by its address.
    let got = common::node_for(client_ip(1), served.addr).await.unwrap();
    assert!(three.contains(&got), "{got}");
    let before = mapping(&pool, 20_000);

    // Added: 127.0.0.14 takes only clients it now owns; it gets none before
    // its probe passed (it starts down).
    dns.set_hosts(&hosts(&[11, 12, 13, 14], "web.test"));
    let fourth = format!("127.0.0.14:{port}");
    eventually(
        patient(Duration::from_secs(10)),
        "the fourth node in service",
        || {
            let ok = pool.snapshot().members.iter().any(|m| m.name == fourth);
            async move { ok }
        },
    )
    .await;
    let health = pool.node(&fourth).unwrap().health();
    assert!(
        health.probes >= 1,
        "probed before it got traffic: {health:?}"
    );
    let added = mapping(&pool, 20_000);
    let mut moved = 0;
    for (b, a) in before.iter().zip(&added) {
        if b != a {
            assert_eq!(a, &fourth, "a client moved to another old node");
            moved += 1;
        }
    }
    assert!(
        moved > 2_000 && moved < 8_000,
        "{moved} of 20000 moved to the new node"
    );

    // Removed: only 127.0.0.12's clients move.
    let second = format!("127.0.0.12:{port}");
    dns.set_hosts(&hosts(&[11, 13, 14], "web.test"));
    eventually(
        patient(Duration::from_secs(10)),
        "the removed node gone",
        || {
            let ok = pool.node(&second).is_none();
            async move { ok }
        },
    )
    .await;
    let removed = mapping(&pool, 20_000);
    for (b, a) in added.iter().zip(&removed) {
        if b != a {
            assert_eq!(b, &second, "a client of a remaining node moved");
        }
        assert_ne!(a, &second);
    }
    let st = served.handle.discovery("p").unwrap();
    assert_eq!(st.outcome, "ok");
    assert_eq!(st.nodes.len(), 3);

    // Outage: the last good set stays, traffic still flows, /status says so.
    dns.stop();
    let admin = served.admin.unwrap();
    let handle = served.handle.clone();
    eventually(
        patient(Duration::from_secs(20)),
        "the failure is seen",
        || {
            let failed = handle
                .discovery("p")
                .is_some_and(|d| d.outcome.starts_with("failed: ") && d.resolutions_failed > 0);
            async move { failed }
        },
    )
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&common::http_get(admin, "/status").await.unwrap()).unwrap();
    let d = &status["pools"][0]["discover"];
    assert_eq!(d["name"], "web.test", "{d}");
    assert_eq!(d["type"], "a", "{d}");
    assert!(
        d["outcome"].as_str().unwrap().starts_with("failed: "),
        "{d}"
    );
    assert!(d["last_resolution_at"].is_string(), "{d}");
    assert_eq!(d["nodes"].as_array().unwrap().len(), 3, "{d}");
    assert_eq!(names(&pool).len(), 3, "the last good set stays");
    assert_eq!(mapping(&pool, 20_000), removed, "nobody moved");
    let got = common::node_for(client_ip(7), served.addr).await.unwrap();
    assert_eq!(got, removed[7]);
    let metrics = common::http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("ringlb_discovery_resolutions_total{pool=\"p\",outcome=\"failed\"}"),
        "{metrics}"
    );
    served.stop().await;
}

#[tokio::test]
async fn two_instances_resolving_one_name_map_100000_ips_identically() {
    let Some(bin) = dnsmasq_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let octets = [21, 22, 23, 24, 25];
    let dns = Dns::start(bin, dir.path(), &hosts(&octets, "many.test"), &[]).await;
    answering(&dns, "many.test", DiscoverType::A, Some(7000)).await;
    let text = config(
        dns.resolver(),
        "name = \"many.test\"\ntype = \"a\"\nport = 7000\n",
    )
    .replace("[pools.p.health]", "[pools.p.health]\nkind = \"none\"");
    let a = Served::start(&text, "a.toml", "lb");
    let b = Served::start(&text, "b.toml", "lb");
    let (pa, pb) = (a.handle.pool("p").unwrap(), b.handle.pool("p").unwrap());
    eventually(
        patient(Duration::from_secs(10)),
        "both have five nodes",
        || {
            let ok = pa.snapshot().members.len() == 5 && pb.snapshot().members.len() == 5;
            async move { ok }
        },
    )
    .await;
    let (ma, mb) = (mapping(&pa, 100_000), mapping(&pb, 100_000));
    let differ = ma.iter().zip(&mb).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of 100000 IPs map differently");
    // And `ringlb which` answers the same, from its own resolution.
    let path = dir.path().join("which.toml");
    std::fs::write(&path, &text).unwrap();
    let ip: IpAddr = client_ip(99);
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["which", "-c"])
        .arg(&path)
        .arg(ip.to_string())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains("note: pool p: resolved a many.test now: 5 nodes"),
        "{out}"
    );
    assert!(out.contains(&format!("{ip} -> {}", ma[99])), "{out}");
    a.stop().await;
    b.stop().await;
    dns.stop();
}

#[tokio::test]
async fn srv_records_give_target_port_nodes_weighted_at_the_lowest_priority() {
    let Some(bin) = dnsmasq_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = [
        "--host-record=a.srv.test,127.0.0.31",
        "--host-record=b.srv.test,127.0.0.32",
        "--host-record=c.srv.test,127.0.0.33",
        "--srv-host=_app._tcp.srv.test,a.srv.test,7001,10,10",
        "--srv-host=_app._tcp.srv.test,b.srv.test,7002,10,30",
        "--srv-host=_app._tcp.srv.test,c.srv.test,7003,20,100",
    ]
    .map(String::from)
    .to_vec();
    let dns = Dns::start(bin, dir.path(), "", &extra).await;
    answering(&dns, "_app._tcp.srv.test", DiscoverType::Srv, None).await;
    let text = config(
        dns.resolver(),
        "name = \"_app._tcp.srv.test\"\ntype = \"srv\"\n",
    )
    .replace("[pools.p.health]", "[pools.p.health]\nkind = \"none\"");
    let served = Served::start(&text, "srv.toml", "lb");
    let pool = served.handle.pool("p").unwrap();
    eventually(patient(Duration::from_secs(10)), "two SRV nodes", || {
        let ok = pool.nodes().len() == 2;
        async move { ok }
    })
    .await;
    let nodes: Vec<(String, String, u32)> = pool
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.addr.to_string(), n.weight()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            (
                "a.srv.test:7001".to_string(),
                "127.0.0.31:7001".to_string(),
                1
            ),
            (
                "b.srv.test:7002".to_string(),
                "127.0.0.32:7002".to_string(),
                3
            ),
        ],
        "priority 20 (c) is not used; weights 10:30 reduced to 1:3"
    );
    // `check --probe` prints the same nodes.
    let path = dir.path().join("srv.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "--probe", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.contains("nodes from DNS: srv _app._tcp.srv.test every 200ms"),
        "{out}"
    );
    assert!(
        out.contains("a.srv.test:7001 (addr 127.0.0.31:7001, weight 1), b.srv.test:7002 (addr 127.0.0.32:7002, weight 3)"),
        "{out}"
    );
    served.stop().await;
    dns.stop();
}

#[tokio::test]
async fn a_first_resolution_that_fails_starts_with_no_nodes_and_keeps_trying() {
    // Nothing listens on this port: every resolution fails.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resolver = SocketAddr::from(([127, 0, 0, 1], port));
    let text = config(resolver, "name = \"none.test\"\ntype = \"a\"\nport = 80\n");
    let served = Served::start(&text, "none.toml", "lb");
    let handle = served.handle.clone();
    eventually(
        patient(Duration::from_secs(20)),
        "two failed resolutions",
        || {
            let n = handle.discovery("p").map_or(0, |d| d.resolutions_failed);
            async move { n >= 2 }
        },
    )
    .await;
    assert!(handle.pool("p").unwrap().nodes().is_empty());
    // A client is closed at once (no node), and the balancer stays up.
    let mut s = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let got = common::read_to_eof(&mut s, patient(Duration::from_secs(5))).await;
    assert!(got.map_or(true, |b| b.is_empty()));
    served.stop().await;
}

#[tokio::test]
async fn a_reload_switches_between_nodes_and_discover_and_restarts_a_changed_discovery() {
    let Some(bin) = dnsmasq_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (port, _backends) = backends(&[41, 42, 43]).await;
    let dns = Dns::start(bin, dir.path(), &hosts(&[41, 42], "sw.test"), &[]).await;
    answering(&dns, "sw.test", DiscoverType::A, Some(port)).await;
    let listed = config(dns.resolver(), "")
        .split("[pools.p.discover]")
        .next()
        .unwrap()
        .to_string()
        + &format!("[[pools.p.nodes]]\nname = \"static\"\naddr = \"127.0.0.43:{port}\"\n");
    let discover = |name: &str| {
        config(
            dns.resolver(),
            &format!("name = \"{name}\"\ntype = \"a\"\nport = {port}\n"),
        )
    };
    let path = dir.path().join("sw.toml");
    std::fs::write(&path, &listed).unwrap();
    let served = Served::run(
        ringlb::Server::bind(ringlb::Config::from_file(&path).unwrap()).unwrap(),
        "lb",
    );
    let handle = served.handle.clone();
    let pool = handle.pool("p").unwrap();
    assert_eq!(names(&pool), vec!["static"]);
    assert!(handle.discovery("p").is_none());

    // nodes -> discover: the first good answer replaces the listed node.
    std::fs::write(&path, discover("sw.test")).unwrap();
    handle.reload();
    let two: Vec<String> = [41, 42].map(|o| format!("127.0.0.{o}:{port}")).to_vec();
    eventually(
        patient(Duration::from_secs(10)),
        "the discovered nodes",
        || {
            let ok = names(&pool) == two;
            async move { ok }
        },
    )
    .await;
    assert_eq!(handle.discovery("p").unwrap().config.name, "sw.test");

    // Another name: the discovery restarts with it.
    dns.set_hosts(&(hosts(&[41, 42], "sw.test") + &hosts(&[43], "other.test")));
    std::fs::write(&path, discover("other.test")).unwrap();
    handle.reload();
    let other = vec![format!("127.0.0.43:{port}")];
    eventually(
        patient(Duration::from_secs(10)),
        "the other name's node",
        || {
            let ok = names(&pool) == other
                && handle
                    .discovery("p")
                    .is_some_and(|d| d.config.name == "other.test");
            async move { ok }
        },
    )
    .await;

    // discover -> nodes: the listed node, and no discovery any more.
    std::fs::write(&path, &listed).unwrap();
    handle.reload();
    eventually(
        patient(Duration::from_secs(10)),
        "the listed node again",
        || {
            let ok = names(&pool) == vec!["static"] && handle.discovery("p").is_none();
            async move { ok }
        },
    )
    .await;
    served.stop().await;
    dns.stop();
}
