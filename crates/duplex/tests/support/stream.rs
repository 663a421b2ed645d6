//! Reading Redis Stream replies (`XREADGROUP`, `XREAD`, `XRANGE`,
//! `XAUTOCLAIM`) the way a backend worker does, in RESP2 or RESP3 shape.

use std::collections::HashMap;

use redis::Value;

/// An entry's fields.
pub type Fields = HashMap<String, String>;
/// An entry: its id and fields.
pub type Entry = (String, Fields);

/// A bulk or simple string.
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not text: {other:?}"),
    }
}

/// The items of an array (a map's keys and values in turn; nil is empty).
pub fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        other => panic!("not a list: {other:?}"),
    }
}

/// `[[id, [field, value, ...]], ...]` (`XRANGE`, `XAUTOCLAIM`'s claimed
/// list); deleted entries (nil) are skipped.
pub fn stream_entries(list: &Value) -> Vec<Entry> {
    items(list)
        .into_iter()
        .filter(|e| !matches!(e, Value::Nil))
        .map(|entry| {
            let entry = items(entry);
            let fields = items(entry[1])
                .chunks(2)
                .map(|kv| (text(kv[0]), text(kv[1])))
                .collect();
            (text(entry[0]), fields)
        })
        .collect()
}

/// Every entry of an `XREAD` / `XREADGROUP` reply, over all its streams:
/// `[[stream, entries], ...]`, or a map `stream => entries`; nil is none.
pub fn read_reply_entries(reply: &Value) -> Vec<Entry> {
    let per_stream: Vec<&Value> = match reply {
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        other => items(other).into_iter().map(|s| items(s)[1]).collect(),
    };
    per_stream.into_iter().flat_map(stream_entries).collect()
}

/// The node's default upstream stream, and the consumer group the tests'
/// workers read it in.
pub const STREAM: &str = "duplex:upstream";
/// See [`STREAM`].
pub const GROUP: &str = "workers";

/// `XGROUP CREATE duplex:upstream workers $ MKSTREAM`.
pub async fn create_group(redis: &super::redis_server::RedisServer) {
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", STREAM, GROUP, "$", "MKSTREAM"][..])
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
}

/// `XREADGROUP GROUP workers <consumer> COUNT <count> BLOCK <block_ms>
/// STREAMS duplex:upstream >`, as a worker reads.
pub async fn read_group(
    conn: &mut redis::aio::MultiplexedConnection,
    consumer: &str,
    count: usize,
    block_ms: u64,
) -> Vec<Entry> {
    let reply: Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", GROUP, consumer, "COUNT"][..])
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg(&["STREAMS", STREAM, ">"][..])
        .query_async(conn)
        .await
        .expect("XREADGROUP");
    read_reply_entries(&reply)
}
