//! Pusher HTTP API request signing (`auth_version` 1.0), so the same
//! generator can publish to Sockudo and other Pusher-protocol servers.

use hmac::{KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::protocol::url_encode;

/// Pusher app credentials.
#[derive(Debug, Clone)]
pub(crate) struct PusherApp {
    /// App id (path of the HTTP API).
    pub(crate) id: String,
    /// App key (`auth_key`, and the WebSocket path).
    pub(crate) key: String,
    /// App secret (signing).
    pub(crate) secret: String,
}

/// The signed query string of a Pusher HTTP API request (`auth_version` 1.0):
/// `auth_signature` = hex HMAC-SHA256(secret, "POST\n<path>\n<sorted query>").
pub(crate) fn pusher_query(app: &PusherApp, path: &str, body: &[u8], timestamp: u64) -> String {
    let body_md5 = hex::encode(Md5::digest(body));
    // Already sorted by key.
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}",
        url_encode(&app.key)
    );
    let to_sign = format!("POST\n{path}\n{query}");
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(app.secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(to_sign.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!("{query}&auth_signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // The worked example of the Pusher HTTP API documentation.
        let app = PusherApp {
            id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let q = pusher_query(&app, "/apps/3/events", body, 1353088179);
        assert_eq!(
            q,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
