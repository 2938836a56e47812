//! The PROXY protocol against a real nginx (`listen ... proxy_protocol`): nginx
//! must report and log the client's original address, for v1 and v2. Skipped
//! with a printed reason when nginx is not installed, unless REQUIRE_NGINX=1
//! (CI installs nginx and sets it).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ringlb::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The nginx binary; `None` (after printing why) when it is not installed, or a
/// failure under `REQUIRE_NGINX=1`.
fn nginx() -> Option<&'static str> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let missing = found
        .is_none()
        .then(|| "nginx is not installed (apt-get install nginx)".to_string());
    if needs("REQUIRE_NGINX", missing) {
        found
    } else {
        None
    }
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_and_logs_the_original_client_address() {
    let Some(bin) = nginx() else { return };
    let dir = tempfile::tempdir().unwrap();
    // nginx cannot be told to listen on port 0 and report the port: reserve one
    // (outside the ephemeral range, locked, held until just before nginx binds).
    let mut reserved = reserve_port();
    let port = reserved.port();
    let log = dir.path().join("access.log");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    log_format pp '$proxy_protocol_addr:$proxy_protocol_port via $remote_addr "$request"';
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        access_log {log} pp;
        location / {{
            default_type text/plain;
            return 200 "client $proxy_protocol_addr:$proxy_protocol_port\n";
        }}
    }}
}}
"#,
            dir = dir.path().display(),
            log = log.display(),
        ),
    )
    .unwrap();
    reserved.release();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child);
    let node: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(10), "nginx listening", || async move {
        tokio::net::TcpStream::connect(node).await.is_ok()
    })
    .await;

    for (k, version) in ["v1", "v2"].iter().enumerate() {
        let text = format!(
            "shutdown_grace = \"1s\"\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nproxy_protocol = \"{version}\"\n[pools.p.health]\nkind = \"none\"\n[[pools.p.nodes]]\nname = \"nginx\"\naddr = \"{node}\"\n"
        );
        let server = Server::bind(Config::parse(&text, "nginx.toml").unwrap()).unwrap();
        let lb = server.local_addr("lb").unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));

        let src = client_ip(900 + k as u32);
        let mut c = connect_from(src, lb).await.unwrap();
        let local = c.local_addr().unwrap();
        c.write_all(
            format!("GET /{version} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.ends_with(&format!("client {}:{}\n", local.ip(), local.port())),
            "nginx answered with another address: {resp}"
        );
        // nginx writes the access log line when the request ends.
        let want = format!(
            "{}:{} via 127.0.0.1 \"GET /{version} HTTP/1.1\"",
            local.ip(),
            local.port()
        );
        let logged = || std::fs::read_to_string(&log).unwrap_or_default();
        let what = format!("access log line {want:?}");
        if poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let hit = logged().lines().any(|l| l == want);
            async move { hit.then_some(()) }
        })
        .await
        .is_none()
        {
            panic!("no {what}; the log:\n{}", logged());
        }
        shutdown.cancel();
        task.await.unwrap();
    }
}
