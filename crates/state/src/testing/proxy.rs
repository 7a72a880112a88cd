//! A TCP proxy a test can stop, restart or freeze, to take a server away
//! from the code under test without touching the shared server itself.
//! Test support: it panics when the loopback interface cannot be used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Forwards `addr` to `target` until stopped. While frozen it accepts
/// connections and reads requests but answers nothing, like a paused server;
/// what was held is delivered on thaw.
pub struct Proxy {
    pub addr: SocketAddr,
    target: String,
    frozen: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// A loopback address nothing listens on yet.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let mut proxy = Proxy::closed(target);
        proxy.restart();
        proxy
    }

    /// A proxy whose address refuses connections until [`Proxy::restart`]:
    /// the server is down from the start.
    pub fn closed(target: &str) -> Proxy {
        Proxy {
            addr: free_addr(),
            target: target.to_owned(),
            frozen: watch::channel(false).0,
            task: None,
        }
    }

    /// `url` (a `postgres://` or `redis://` URL) with its host and port
    /// replaced by this proxy's.
    pub fn url_through(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    /// Closes the listener and every forwarded connection: the server is gone.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub fn restart(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let frozen = self.frozen.subscribe();
        self.task = Some(tokio::spawn(serve(listener, self.target.clone(), frozen)));
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, target: String, frozen: watch::Receiver<bool>) {
    let mut links = JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        let Ok(outbound) = TcpStream::connect(&target).await else {
            continue;
        };
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        links.spawn(pump(in_read, out_write, frozen.clone()));
        links.spawn(pump(out_read, in_write, frozen.clone()));
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
