//! A service binary run as a child process, for tests that kill or duplicate it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running child process of a service binary, killed when dropped.
pub struct ServiceProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl ServiceProcess {
    /// Starts `bin` on a free loopback port against `database_url`, with the
    /// given environment, and waits until it answers HTTP.
    pub async fn start(bin: &str, database_url: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr")
        };
        let child = spawn(bin, database_url, &[], env, |command| {
            command.env("BIND", addr.to_string());
        });
        let process = ServiceProcess { addr, child };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let probe = self.url("/payments/00000000-0000-0000-0000-000000000000");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let answered = client
                .get(&probe)
                .header("x-tenant-id", "probe")
                .send()
                .await
                .is_ok();
            if answered {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service at {} did not come up", self.addr);
    }

    /// The URL of `path` on this process.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill the service");
    }
}

/// A worker binary (no HTTP: a relay, a consumer) run as a child process, killed when
/// dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `bin` with `args` against `database_url`, with the given environment.
    pub fn start(
        bin: &str,
        database_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let child = spawn(bin, database_url, args, env, |_| {});
        WorkerProcess { child }
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and reaps it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill the worker");
    }
}

/// Spawns `bin` against `database_url` with quiet logs, no stdin or stdout, killed when
/// dropped; `more` adds to its command.
fn spawn(
    bin: &str,
    database_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
    more: impl FnOnce(&mut Command),
) -> Child {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    more(&mut command);
    command
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}
