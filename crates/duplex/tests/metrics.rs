//! `GET /metrics`: Prometheus text that moves with what clients do.

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::client::Client;
use support::node::{settings, TestNode};

/// Scrapes and parses `name{labels} value` lines into a map.
async fn scrape(node: &TestNode) -> HashMap<String, f64> {
    let response = reqwest::get(node.http("/metrics")).await.expect("GET");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(content_type.starts_with("application/openmetrics-text"));
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut series = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        assert!(name.starts_with("duplex_"), "{line}");
        series.insert(name.to_string(), value.parse::<f64>().expect("number"));
    }
    series
}

fn get(series: &HashMap<String, f64>, name: &str) -> f64 {
    *series
        .get(name)
        .unwrap_or_else(|| panic!("no series {name}"))
}

#[tokio::test]
async fn metrics_move_with_connections_publishes_and_deliveries() {
    let node = TestNode::memory().await;
    let before = scrape(&node).await;
    assert_eq!(
        get(&before, r#"duplex_connections{transport="plain"}"#),
        0.0
    );
    assert_eq!(get(&before, "duplex_broker_up"), 1.0);

    let mut plain = Client::connect(&node.ws("/")).await;
    let mut native = Client::connect(&node.ws("/ws")).await;
    native.subscribe(&["channel"]).await;
    node.post_json(
        "/api/publish",
        &json!({"channel": "channel", "data": "from http"}),
    )
    .await;
    assert_eq!(plain.next_text().await, "from http");
    plain.send_text("from a client").await;
    assert_eq!(plain.next_text().await, "from a client");
    assert_eq!(native.next_push().await.1, json!("from http"));
    assert_eq!(native.next_push().await.1, json!("from a client"));

    let during = scrape(&node).await;
    assert_eq!(
        get(&during, r#"duplex_connections{transport="plain"}"#),
        1.0
    );
    assert_eq!(
        get(&during, r#"duplex_connections{transport="native"}"#),
        1.0
    );
    assert_eq!(get(&during, "duplex_subscriptions"), 2.0);
    assert_eq!(get(&during, "duplex_channels"), 1.0);
    assert_eq!(
        get(&during, r#"duplex_publishes_total{source="http"}"#),
        1.0
    );
    assert_eq!(
        get(&during, r#"duplex_publishes_total{source="client"}"#),
        1.0
    );
    assert_eq!(get(&during, "duplex_deliveries_total"), 4.0);
    assert!(get(&during, "duplex_delivered_bytes_total") > 0.0);
    // The plain frame and the native subscribe command.
    assert_eq!(get(&during, "duplex_client_messages_total"), 2.0);
    assert!(get(&during, "duplex_client_received_bytes_total") > 13.0);
    assert_eq!(get(&during, "duplex_fanout_duration_seconds_count"), 2.0);
    assert_eq!(get(&during, "duplex_connects_total"), 2.0);

    plain.close().await;
    native.close().await;
    support::eventually("disconnects counted", || async {
        let after = scrape(&node).await;
        get(&after, r#"duplex_disconnects_total{reason="client_close"}"#) == 2.0
            && get(&after, r#"duplex_connections{transport="native"}"#) == 0.0
    })
    .await;
}

#[tokio::test]
async fn metrics_need_the_api_key_when_one_is_set() {
    let node = TestNode::start(duplex::config::Settings {
        api_key: Some("metrics-key".into()),
        ..settings()
    })
    .await;
    let http = reqwest::Client::new();
    let without = http.get(node.http("/metrics")).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let with = http
        .get(node.http("/metrics"))
        .header("Authorization", "apikey metrics-key")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
}
