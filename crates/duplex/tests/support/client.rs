//! WebSocket clients for tests (tokio-tungstenite: an independent implementation).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected test client.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
}

/// What a client saw when the server closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Client { ws, next_id: 1 }
    }

    /// Connects from the given local address (127.0.0.2, 127.0.0.3...: all
    /// of 127/8 is loopback on Linux), as a client on another host would.
    pub async fn connect_from(url: &str, local: [u8; 4]) -> Client {
        Client::from_ws(Self::ws_from(url, local).await.expect("websocket connects"))
    }

    /// Like [`Client::connect_from`], the handshake's outcome as it is.
    pub async fn ws_from(
        url: &str,
        local: [u8; 4],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().expect("ws:// url");
        let port = uri.port_u16().expect("url with a port");
        let host: std::net::IpAddr = uri.host().expect("host").parse().expect("an IP host");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((std::net::Ipv4Addr::from(local), 0).into())
            .expect("bind the local address");
        let tcp = socket
            .connect((host, port).into())
            .await
            .expect("tcp connect");
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .map(|(ws, _)| ws)
    }

    /// Wraps a stream connected some other way (custom headers).
    pub fn from_ws(ws: Ws) -> Client {
        Client { ws, next_id: 1 }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws
            .send(Message::binary(data.to_vec()))
            .await
            .expect("send");
    }

    /// Next data message (text or binary), skipping pings.
    pub async fn next_message(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("message within the wait")
                .expect("stream open")
                .expect("valid frame");
            match msg {
                Message::Text(_) | Message::Binary(_) | Message::Close(_) => return msg,
                _ => continue,
            }
        }
    }

    pub async fn next_text(&mut self) -> String {
        match self.next_message().await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub async fn next_json(&mut self) -> Value {
        serde_json::from_str(&self.next_text().await).expect("JSON from server")
    }

    /// Reads until the server's close frame; panics on data frames unless `skip_data`.
    pub async fn expect_close(&mut self) -> Closed {
        // One wait for the close, however many pings come before it.
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(until, self.ws.next())
                .await
                .expect("close within the wait");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    }
                }
                Some(Ok(Message::Close(None))) => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Sends a native command and returns its reply (pushes before it are skipped).
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string())
            .await;
        loop {
            let reply = self.next_json().await;
            if reply.get("id") == Some(&json!(id)) {
                return reply;
            }
        }
    }

    /// Subscribes (native) and asserts success.
    pub async fn subscribe(&mut self, channels: &[&str]) {
        let reply = self
            .command("subscribe", json!({"channels": channels}))
            .await;
        assert!(reply.get("result").is_some(), "subscribe failed: {reply}");
    }

    /// Next `message` push as (channel, data).
    pub async fn next_push(&mut self) -> (String, Value) {
        loop {
            let v = self.next_json().await;
            if v["push"] == "message" {
                return (
                    v["channel"].as_str().unwrap_or_default().to_string(),
                    v["data"].clone(),
                );
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// The status and body of a WebSocket handshake the node refused; panics
/// when it was accepted or failed otherwise.
pub async fn refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string(),
        ),
        Ok(_) => panic!("connection to {url} was accepted"),
        Err(e) => panic!("connection to {url}: unexpected error {e}"),
    }
}
