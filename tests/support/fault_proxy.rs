//! An HTTP-agnostic TCP forwarder that loses responses: for the first connections it
//! forwards the request, waits for the server's first response bytes and then closes
//! both sides, so the client sees its connection break after the server acted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards 127.0.0.1:`addr` to `upstream`, dropping the responses of the first
/// `drop_first` connections.
pub struct ResponseDropper {
    /// Where clients connect.
    pub addr: SocketAddr,
    dropped: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ResponseDropper {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, drop_first: usize) -> ResponseDropper {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let dropped = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let task = {
            let dropped = dropped.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let lose = seen.fetch_add(1, Ordering::SeqCst) < drop_first;
                    let dropped = dropped.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        if lose {
                            if lose_response(client, server).await {
                                dropped.fetch_add(1, Ordering::SeqCst);
                            }
                        } else {
                            forward(client, server).await;
                        }
                    });
                }
            })
        };
        ResponseDropper {
            addr,
            dropped,
            task,
        }
    }

    /// How many responses were lost so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for ResponseDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards both ways until either side closes.
async fn forward(mut client: TcpStream, mut server: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Forwards the client's bytes until the server starts answering, then closes both
/// connections without passing the answer on. `true` when an answer was lost.
async fn lose_response(client: TcpStream, server: TcpStream) -> bool {
    let (mut client_read, _client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut first = [0u8; 1];
    let answered = matches!(server_read.read(&mut first).await, Ok(1));
    upstream.abort();
    answered
    // Both connections close here: the client never sees a byte of the answer.
}
