//! The agent tasks of a pool (HAProxy's `agent-check`): one loop per node that,
//! every `interval` ± 10%, connects to the agent port on the node's IP, writes
//! `send` if set, reads one line within `timeout`, parses it ([`reply`]) and
//! reports it to the [`Pool`], which keeps the agent's state apart from health
//! and the operator's state. A check that gives no usable line is reported as a
//! failure and changes nothing. Like the [`prober`](crate::prober), it never
//! picks nodes or changes a node itself.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::pool::{AgentReport, AgentResult, Node, Pool};
use crate::prober::{Jitter, NodeTasks};

pub mod reply;

/// The agent tasks of one pool: one per node while the pool has `[agent]`,
/// kept in step with its nodes and settings by [`Agent::sync`] after a reload.
#[derive(Debug)]
pub struct Agent {
    pool: Arc<Pool>,
    /// The settings the running loops use.
    config: Option<AgentConfig>,
    stop: CancellationToken,
    tasks: NodeTasks,
}

impl Agent {
    /// Start checking every node's agent (none without `[agent]`); everything
    /// stops when `stop` is cancelled.
    pub fn start(pool: Arc<Pool>, stop: &CancellationToken) -> Agent {
        let stop = stop.child_token();
        let mut a = Agent {
            pool,
            config: None,
            tasks: NodeTasks::new(&stop),
            stop,
        };
        a.sync();
        a
    }

    /// Follow the pool after a reload: changed agent settings restart every
    /// loop (removing `[agent]` stops them; the pool clears what the agent set),
    /// new nodes get a loop, removed nodes lose theirs.
    pub fn sync(&mut self) {
        let config = self.pool.settings().agent.clone();
        if config != self.config {
            // Every loop of the old settings stops; the new ones start below.
            std::mem::replace(&mut self.tasks, NodeTasks::new(&self.stop)).cancel();
            self.config = config;
        }
        let Some(cfg) = self.config.clone() else {
            return;
        };
        let pool = &self.pool;
        self.tasks.sync(pool.nodes(), |n, tok| {
            agent_loop(pool.clone(), n, cfg.clone(), tok)
        });
    }

    /// Number of running agent loops.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop every loop and wait for them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.shutdown().await;
    }
}

/// Where a node's agent listens: the agent port on the node's IP.
pub fn agent_addr(node: SocketAddr, cfg: &AgentConfig) -> SocketAddr {
    SocketAddr::new(node.ip(), cfg.port)
}

/// Check one node's agent forever: never two checks at once for one node;
/// starts spaced by `interval` ± 10%, the first within the first 10%.
async fn agent_loop(pool: Arc<Pool>, node: Arc<Node>, cfg: AgentConfig, stop: CancellationToken) {
    let mut jitter = Jitter::new(&node.name);
    let mut delay = cfg.interval.mul_f64(jitter.factor(0.0, 0.1));
    let addr = agent_addr(node.addr, &cfg);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = check(addr, &cfg) => o,
        };
        match outcome {
            Ok((line, report)) => pool.agent_report(&node, &line, &report),
            Err((result, detail)) => pool.agent_failed(&node, result, detail),
        }
        delay = cfg
            .interval
            .mul_f64(jitter.factor(0.9, 1.1))
            .saturating_sub(started.elapsed());
    }
}

/// One check: connect to `addr`, write `send`, read one line, all within
/// `timeout`. The line (lossy UTF-8) and what it says, or how it failed.
pub async fn check(
    addr: SocketAddr,
    cfg: &AgentConfig,
) -> Result<(String, AgentReport), (AgentResult, String)> {
    let talk = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| (AgentResult::Connect, format!("connect {addr}: {e}")))?;
        if let Some(send) = &cfg.send {
            stream
                .write_all(send.as_bytes())
                .await
                .map_err(|e| (AgentResult::Io, format!("send to {addr}: {e}")))?;
        }
        let mut buf = vec![0u8; reply::MAX_LINE];
        let mut len = 0;
        loop {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| (AgentResult::Io, format!("read from {addr}: {e}")))?;
            len += n;
            match reply::line(&buf[..len], n == 0) {
                Ok(Some(line)) => {
                    return Ok((
                        String::from_utf8_lossy(line).into_owned(),
                        reply::parse(line),
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err((AgentResult::Invalid, e.to_string())),
            }
        }
    };
    match tokio::time::timeout(cfg.timeout, talk).await {
        Ok(r) => r,
        Err(_) => Err((
            AgentResult::Timeout,
            format!(
                "no line from {addr} within {}",
                crate::config::fmt_duration(cfg.timeout)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    fn cfg(port: u16, send: Option<&str>) -> AgentConfig {
        AgentConfig {
            port,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            send: send.map(str::to_string),
        }
    }

    /// An agent that reads `expect` bytes, then writes `reply` and closes.
    async fn agent(reply: &'static [u8], expect: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut got = vec![0u8; expect];
                if s.read_exact(&mut got).await.is_ok() {
                    let _ = s.write_all(reply).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_check_sends_reads_one_line_and_fails_softly() {
        let a = agent(b"drain 50%\r\nignored\n", 7).await;
        let (line, r) = check(a, &cfg(a.port(), Some("status\n"))).await.unwrap();
        assert_eq!(line, "drain 50%");
        assert_eq!(r.weight, Some(crate::pool::AgentWeight::Percent(50)));

        let a = agent(b"up", 0).await;
        let e = check(a, &cfg(a.port(), None)).await.unwrap_err();
        assert_eq!(e.0, AgentResult::Invalid, "{e:?}");

        // A listener that never answers: the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = silent.local_addr().unwrap();
        let e = check(s, &cfg(s.port(), None)).await.unwrap_err();
        assert_eq!(e.0, AgentResult::Timeout, "{e:?}");
        drop(silent);

        let e = check(s, &cfg(s.port(), None)).await.unwrap_err();
        assert_eq!(e.0, AgentResult::Connect, "{e:?}");
    }
}
