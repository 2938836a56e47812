//! Applying a reload to a running [`Server`]: read and validate the file, diff it
//! ([`diff`](mod@super::diff)), bind every new socket first (any failure refuses the
//! whole reload and the running config stays untouched), then swap pools, update
//! kept listeners, close removed ones, start new ones, follow the probers and
//! agents, the admin endpoint and the pid file, and publish the new generation. Open
//! connections are never closed here unless the config says so (a removed node
//! with `on_node_down = "close"`, a node set to `disabled`: the pool does that).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{error, info, warn};

use super::diff::{diff, summary};
use crate::admin;
use crate::admission::ListenerState;
use crate::agent::Agent;
use crate::config::Config;
use crate::error::ConfigError;
use crate::handle::ReloadRecord;
use crate::listener;
use crate::pool::Pool;
use crate::prober::Prober;
use crate::server::{error_chain, running, stop_accepting, Server};

fn refuse(server: &Server, path: &Path, problems: Vec<String>) {
    let n = server.shared.reloads_failed.fetch_add(1, Ordering::Relaxed) + 1;
    server.shared.metrics.reloads_failed.increment(1);
    error!(
        file = %path.display(),
        problems = %problems.join("; "),
        failed_reloads = n,
        "reload refused; the running configuration stays"
    );
    *server
        .shared
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(ReloadRecord {
        ok: false,
        at: SystemTime::now(),
        message: problems.join("\n"),
        generation: server.shared.generation.load(Ordering::Acquire),
    });
}

/// Read the config file again and apply it, or refuse it and keep running the
/// old config untouched.
pub async fn apply(server: &mut Server) {
    let path = server.shared.config.load().source.clone();
    let read = Config::from_file(&path);
    apply_read(server, read).await
}

/// [`apply`] with the file already read (and validated, or refused): the control
/// loop reads it on a blocking thread, since host names of nodes are resolved
/// then, so that a stop signal never waits for a slow lookup.
pub async fn apply_read(server: &mut Server, read: Result<Config, ConfigError>) {
    let old = server.shared.config.load_full();
    let path = old.source.clone();
    let new = match read {
        Ok(c) => c,
        Err(e) => return refuse(server, &path, e.messages()),
    };
    let d = diff(&old, &new);
    if !d.refused.is_empty() {
        return refuse(server, &path, d.refused);
    }

    // 1. Everything that can fail: bind new sockets first. Dropping them
    //    closes them again if any one fails.
    let mut bound = Vec::new();
    for lc in &d.bind {
        match listener::bind(lc, server.sockets_per_listener()) {
            Ok(b) => bound.push(b),
            Err(e) => return refuse(server, &path, vec![error_chain(&e)]),
        }
    }
    let new_admin = if d.admin_changed {
        match &new.admin {
            Some(a) if server.admin.as_ref().map(|x| x.local_addr) != Some(a.listen) => {
                crate::metrics::install_prometheus();
                match admin::bind(a.listen) {
                    Ok(l) => Some(Some(l)),
                    Err(e) => return refuse(server, &path, vec![error_chain(&e)]),
                }
            }
            Some(_) => None,
            None => Some(None),
        }
    } else {
        None
    };

    // 2. Pools: new rings swapped in where the diff names a change; stayed nodes
    //    keep state and counters. Unchanged pools keep their snapshot. A pool
    //    whose config changed stops its discovery first (so nothing applies
    //    meanwhile) and keeps the nodes it discovered until the new task's
    //    first good answer.
    let mut pools = (*server.shared.pools.load_full()).clone();
    let mut restart = Vec::new();
    let names: Vec<String> = server.discoveries.keys().cloned().collect();
    for name in names {
        let new_pc = new.pools.get(&name);
        if new_pc == server.discoveries.get(&name).map(|d| &d.pool_config) {
            continue;
        }
        if let Some(dt) = server.discoveries.remove(&name) {
            let before = dt.pool_config.discover.clone();
            let seed = dt.shutdown().await.nodes();
            if let Some(pc) = new_pc.filter(|pc| pc.discover.is_some()) {
                let keep = match (&before, &pc.discover) {
                    (Some(a), Some(b)) => {
                        (&a.name, a.kind, a.port, a.resolver)
                            == (&b.name, b.kind, b.port, b.resolver)
                    }
                    _ => false,
                };
                restart.push((name.clone(), seed, keep));
            }
        }
    }
    for (name, pc) in &new.pools {
        if pc.discover.is_some()
            && !server.discoveries.contains_key(name)
            && !restart.iter().any(|(n, _, _)| n == name)
        {
            // Switched from `nodes`, or a new pool: the first good answer
            // replaces what the pool has.
            let seed = pools
                .get(name)
                .map_or_else(Vec::new, |p| crate::discovery::node_configs(p));
            restart.push((name.clone(), seed, false));
        }
    }
    let mut pool_changes = Vec::new();
    for (name, pc) in &new.pools {
        let seeded;
        let pc = match restart.iter().find(|(n, _, _)| n == name) {
            Some((_, seed, _)) => {
                let mut c = pc.clone();
                c.nodes = seed.clone();
                seeded = c;
                &seeded
            }
            None => pc,
        };
        match pools.get(name) {
            Some(_) if !d.pools_changed.iter().any(|(n, _)| n == name) => {}
            Some(p) => {
                let ch = p.reconfigure(pc);
                if !ch.is_empty() {
                    pool_changes.push((name.clone(), ch));
                }
            }
            None => {
                pools.insert(name.clone(), Arc::new(Pool::new(pc)));
            }
        }
    }
    pools.retain(|name, _| new.pools.contains_key(name));
    server.shared.pools.store(Arc::new(pools.clone()));

    // 3. Listeners that keep their socket: new state (name, pool, limits).
    for (old_name, lc) in &d.kept {
        let Some(r) = server.listeners.iter().find(|r| &r.name() == old_name) else {
            continue;
        };
        let prev = r.config();
        let pool = pools[&lc.pool].clone();
        let same_pool = Arc::ptr_eq(&r.shared.state.load().pool, &pool);
        if prev != *lc || !same_pool {
            r.shared
                .state
                .store(Arc::new(ListenerState::new(lc.clone(), pool)));
        }
        // Every worker's socket is tried, so one failure does not leave the
        // others behind; the warning says that /status shows the new value.
        if prev.tcp_keepalive != lc.tcp_keepalive {
            for (worker, socket) in r.sockets.iter().enumerate() {
                let sock = socket2::SockRef::from(&**socket);
                if let Err(e) = crate::keepalive::apply(sock, lc.tcp_keepalive.as_ref(), true) {
                    warn!(listener = %lc.name, worker, error = %e, "cannot change tcp_keepalive of a running listener: this worker's new connections keep the old setting (/status shows the new one); restart to apply it");
                }
            }
        }
        if prev.backlog != lc.backlog {
            for (worker, socket) in r.sockets.iter().enumerate() {
                if let Err(e) = listener::set_backlog(socket, lc.backlog) {
                    warn!(listener = %lc.name, worker, error = %e, "cannot change the backlog of a running listener: this worker's socket keeps the old one (/status shows the new one); restart to apply it");
                }
            }
        }
    }
    // 4. Close removed or moved listeners (they accept what is queued first);
    //    their open connections continue.
    let mut closing = Vec::new();
    server.listeners.retain_mut(|r| {
        if d.close.contains(&r.name()) {
            r.stop.cancel();
            closing.push((r.name(), r.local_addr, std::mem::take(&mut r.tasks)));
            false
        } else {
            true
        }
    });
    // 5. Start the new ones.
    for b in bound {
        server.listeners.push(running(b, &pools, &server.hard_stop));
        let i = server.listeners.len() - 1;
        server.start_listener(i);
    }
    for (name, addr, tasks) in closing {
        stop_accepting(name, addr, tasks).await;
    }
    server.publish_listeners();

    // 6. Probes, agents and lifecycle loops follow the pools: settings apply at
    //    the next probe; changed agent settings restart a pool's agent loops.
    let stop = server.probe_stop.clone();
    let gone = follow(
        &mut server.probers,
        &pools,
        |p| Prober::start(p.clone(), &stop),
        Prober::sync,
    );
    for p in gone {
        p.shutdown().await;
    }
    let gone = follow(
        &mut server.agents,
        &pools,
        |p| Agent::start(p.clone(), &stop),
        Agent::sync,
    );
    for a in gone {
        a.shutdown().await;
    }
    server.lifecycles.sync(&pools);
    // Discovery: the tasks stopped above start again with the new settings.
    for (name, seed, keep) in restart {
        if let (Some(pool), Some(pc)) = (pools.get(&name), new.pools.get(&name)) {
            info!(pool = %name, discover = %pc.discover.as_ref().map(|d| d.describe()).unwrap_or_default(), "DNS discovery (re)started");
            server.start_discovery(pool.clone(), pc, seed, keep);
        }
    }
    server.publish_discovery();

    // 7. Admin endpoint and pid file.
    if let Some(next) = new_admin {
        if let Some(a) = server.admin.take() {
            a.stop().await;
        }
        server.admin = next.map(|l| admin::spawn(l, server.handle()));
    }
    server.set_pid_file(new.pid_file.clone());

    // 8. Publish.
    let summary = summary(&old, &new, &d, &pool_changes);
    server.shared.config.store(Arc::new(new));
    let generation = server.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    server.shared.metrics.generation.set(generation as f64);
    server.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
    server.shared.metrics.reloads_ok.increment(1);
    info!(file = %path.display(), generation, changes = %summary, "reload applied");
    *server
        .shared
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(ReloadRecord {
        ok: true,
        at: SystemTime::now(),
        message: summary,
        generation,
    });
}

/// Keep one task set per pool: `sync` the ones whose pool stays, `start` one
/// for each new pool. Returns those of removed pools, for the caller to shut
/// down.
fn follow<T>(
    tasks: &mut BTreeMap<String, T>,
    pools: &BTreeMap<String, Arc<Pool>>,
    mut start: impl FnMut(&Arc<Pool>) -> T,
    mut sync: impl FnMut(&mut T),
) -> Vec<T> {
    for (name, pool) in pools {
        match tasks.get_mut(name) {
            Some(t) => sync(t),
            None => {
                tasks.insert(name.clone(), start(pool));
            }
        }
    }
    let removed: Vec<String> = tasks
        .keys()
        .filter(|n| !pools.contains_key(*n))
        .cloned()
        .collect();
    removed
        .into_iter()
        .filter_map(|n| tasks.remove(&n))
        .collect()
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::apply;
    use crate::config::Config;
    use crate::server::Server;

    fn text(weight_a: u32) -> String {
        format!(
            "[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"a\"\n\
             [pools.a]\n[[pools.a.nodes]]\nname = \"a1\"\naddr = \"127.0.0.1:1\"\nweight = {weight_a}\n\
             [pools.b]\n[[pools.b.nodes]]\nname = \"b1\"\naddr = \"127.0.0.1:2\"\n"
        )
    }

    #[tokio::test]
    async fn a_reload_rebuilds_only_the_pools_the_diff_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, text(1)).unwrap();
        let mut server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
        let handle = server.handle();
        let (a0, b0) = (
            handle.pool("a").unwrap().snapshot(),
            handle.pool("b").unwrap().snapshot(),
        );
        std::fs::write(&path, text(3)).unwrap();
        apply(&mut server).await;
        assert_eq!(handle.generation(), 2, "{:?}", handle.last_reload());
        let (a1, b1) = (
            handle.pool("a").unwrap().snapshot(),
            handle.pool("b").unwrap().snapshot(),
        );
        assert!(
            !Arc::ptr_eq(&a0, &a1),
            "pool a was reweighted: new snapshot"
        );
        assert_eq!(a1.nodes[0].weight(), 3);
        assert!(
            Arc::ptr_eq(&b0, &b1),
            "pool b did not change: same snapshot"
        );
        let summary = handle.last_reload().unwrap().message;
        assert!(summary.contains("pool a: weights a1 1->3"), "{summary}");
        assert!(!summary.contains("pool b"), "{summary}");
    }
}
