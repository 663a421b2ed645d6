//! Channel names that would let one name pass for another (issue 14,
//! finding 8c): invisible formatting characters (zero-width joiner U+200D,
//! right-to-left override U+202E...) are refused at every entry point, with
//! the same error as other bad names, and nothing is subscribed or published.

mod support;

use serde_json::json;
use support::client::Client;
use support::node::TestNode;

/// Look-alikes of `news` and `admin`: the console, logs and `/api/channels`
/// would show them as (nearly) the real thing.
const LOOK_ALIKES: [&str; 4] = [
    "ne\u{200D}ws",           // zero-width joiner inside
    "\u{202E}nimda",          // right-to-left override: shown as "admin"
    "news\u{200B}",           // zero-width space at the end
    "chat:\u{2066}x\u{2069}", // isolates
];

#[tokio::test]
async fn invisible_formatting_characters_are_refused_everywhere() {
    let node = TestNode::memory().await;
    let mut client = Client::connect(&node.ws("/ws")).await;
    let reply = client.command("connect", json!({})).await;
    assert!(reply.get("result").is_some(), "{reply}");
    for name in LOOK_ALIKES {
        for (method, params) in [
            ("subscribe", json!({"channel": name})),
            ("publish", json!({"channel": name, "data": "x"})),
        ] {
            let reply = client.command(method, params).await;
            assert_eq!(reply["error"]["code"], 103, "{method} {name:?}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("invisible formatting character"),
                "{message}"
            );
        }

        let (status, body) = node
            .post_json("/api/publish", &json!({"channel": name, "data": "x"}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_channel", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("invisible formatting character"),
            "{body}"
        );

        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("channel", name)
            .finish();
        let (status, body) = support::client::refused(&node.ws(&format!("/?{query}"))).await;
        assert_eq!(status, 400, "plain {name:?}");
        assert!(body.contains("invisible formatting character"), "{body}");
    }
    // The connection lives on, and nothing of the refused names exists.
    client.subscribe(&["news"]).await;
    let (_, channels) = node.get_json("/api/channels").await;
    assert_eq!(
        channels["channels"],
        json!([{"name": "news", "subscribers": 1}]),
        "{channels}"
    );
}
