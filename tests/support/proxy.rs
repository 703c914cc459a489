//! A TCP forwarder between a pool and Postgres that a test can cut and restore, to
//! make the store unreachable on a real socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::PgConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::TestDb;

/// Forwards 127.0.0.1:`addr` to an upstream Postgres.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let task = {
            let up = up.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused: the store is "down"
                        continue;
                    }
                    let mut cut_rx = cut.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            })
        };
        Proxy {
            addr,
            up,
            cut,
            task,
        }
    }

    /// Starts forwarding to the Postgres server of `db`.
    pub async fn in_front_of(db: &TestDb) -> Proxy {
        let upstream: SocketAddr =
            tokio::net::lookup_host((db.options.get_host(), db.options.get_port()))
                .await
                .expect("resolve the database host")
                .next()
                .expect("an address for the database host");
        Proxy::start(upstream).await
    }

    /// A proxy in front of `db`, with a small pool (4 connections, 2 s to acquire) that
    /// reaches `db` through it.
    pub async fn with_pool(db: &TestDb) -> (Proxy, sqlx::PgPool) {
        let proxy = Proxy::in_front_of(db).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_with(proxy.connect_options(db))
            .await
            .expect("pool through the proxy");
        (proxy, pool)
    }

    /// The options to connect to `db` through this proxy.
    pub fn connect_options(&self, db: &TestDb) -> PgConnectOptions {
        db.options.clone().host("127.0.0.1").port(self.addr.port())
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
