//! Where things live on a Redis Cluster: the seed nodes of a
//! `redis+cluster://` URL, the hash slot of a channel or key, and which
//! master serves each slot (`CLUSTER SHARDS`), compared between polls to
//! notice a failover or a slot migration.
//!
//! Pure: parsing and arithmetic, no I/O.

use std::collections::BTreeMap;

use redis::Value;

/// The URL scheme that selects the cluster broker.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// Why a `redis+cluster://` URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// Not the cluster scheme.
    #[error("not a {CLUSTER_SCHEME} URL")]
    Scheme,
    /// No `host:port` after the scheme.
    #[error("no node given: the form is {CLUSTER_SCHEME}[user:password@]host:port[,host:port...]")]
    Empty,
    /// One of the nodes is not `host:port`.
    #[error("{0:?} is not host:port")]
    Node(String),
}

/// Whether `url` asks for a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with(CLUSTER_SCHEME)
}

/// The `redis://` URL of each seed node of `redis+cluster://[user:pw@]h:p,h:p[/]`
/// (the credentials apply to every node).
pub fn seeds(url: &str) -> Result<Vec<String>, SeedError> {
    let rest = url.strip_prefix(CLUSTER_SCHEME).ok_or(SeedError::Scheme)?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let mut out = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let valid = host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !valid {
            return Err(SeedError::Node(host.to_string()));
        }
        out.push(format!("redis://{auth}{host}"));
    }
    if out.is_empty() {
        return Err(SeedError::Empty);
    }
    Ok(out)
}

/// The hash slot of a channel or key: CRC16 (XMODEM, as Redis) of its hash
/// tag (the part between the first `{` and the next `}`, when not empty),
/// else of the whole name. redis-rs computes it too (`cluster_routing::
/// Slot::for_key`) but does not expose the number, which the node needs
/// to group `SSUBSCRIBE`s: the crc16 crate is the one redis-rs uses.
pub fn slot(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|b| *b == b'{').and_then(|open| {
        let close = name[open + 1..].iter().position(|b| *b == b'}')?;
        let tag = &name[open + 1..open + 1 + close];
        (!tag.is_empty()).then_some(tag)
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(name)) % SLOTS
}

/// Which master serves each range of slots: first slot -> (last slot,
/// `ip:port`), as one `CLUSTER SHARDS` answer says. Two answers compare
/// equal when no slot changed hands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap(BTreeMap<u16, (u16, String)>);

impl SlotMap {
    /// The master serving `slot`, if any is known.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        let (_, (last, addr)) = self.0.range(..=slot).next_back()?;
        (slot <= *last).then_some(addr.as_str())
    }

    /// The number of distinct masters.
    pub fn masters(&self) -> usize {
        let mut all: Vec<&str> = self.0.values().map(|(_, a)| a.as_str()).collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }

    /// Reads a `CLUSTER SHARDS` answer (RESP2 arrays or RESP3 maps): for
    /// each shard its `slots` pairs and the master among its `nodes` that is
    /// `online`. None when the answer is not one.
    pub fn from_shards(reply: &Value) -> Option<SlotMap> {
        let Value::Array(shards) = reply else {
            return None;
        };
        let mut map = BTreeMap::new();
        for shard in shards {
            let fields = pairs(shard)?;
            let slots = match field(&fields, "slots")? {
                Value::Array(s) => s,
                _ => return None,
            };
            let Value::Array(nodes) = field(&fields, "nodes")? else {
                return None;
            };
            let master = nodes.iter().filter_map(pairs).find(|node| {
                text(field(node, "role")) == Some("master")
                    && text(field(node, "health")) == Some("online")
            });
            let Some(master) = master else { continue };
            let ip = text(field(&master, "ip")).or_else(|| text(field(&master, "endpoint")))?;
            let Some(Value::Int(port)) = field(&master, "port") else {
                return None;
            };
            for range in slots.chunks(2) {
                if let [Value::Int(lo), Value::Int(hi)] = range {
                    let lo = u16::try_from(*lo).ok()?;
                    let hi = u16::try_from(*hi).ok()?;
                    map.insert(lo, (hi, format!("{ip}:{port}")));
                }
            }
        }
        Some(SlotMap(map))
    }
}

/// A map or a flat key-value array as pairs.
fn pairs(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(a) => Some(
            a.chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
        ),
        _ => None,
    }
}

fn field<'a>(fields: &[(&'a Value, &'a Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(k, _)| text(Some(k)) == Some(name))
        .map(|(_, v)| *v)
}

fn text(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_carry_credentials_to_every_node() {
        assert_eq!(
            seeds("redis+cluster://u:p@a:7000,b:7001/").ok(),
            Some(vec![
                "redis://u:p@a:7000".to_string(),
                "redis://u:p@b:7001".to_string()
            ])
        );
        assert_eq!(seeds("redis://a:1"), Err(SeedError::Scheme));
        assert_eq!(seeds("redis+cluster://"), Err(SeedError::Empty));
        assert_eq!(seeds("redis+cluster://a"), Err(SeedError::Node("a".into())));
    }

    #[test]
    fn slots_follow_redis_and_hash_tags() {
        // Values as `CLUSTER KEYSLOT` answers them.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_eq!(slot(b"{news}:meta"), slot(b"news"));
    }

    #[test]
    fn shards_give_each_slot_its_online_master() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |port: i64, role: &str, health: &str| {
            Value::Array(vec![
                bulk("ip"),
                bulk("127.0.0.1"),
                bulk("port"),
                Value::Int(port),
                bulk("role"),
                bulk(role),
                bulk("health"),
                bulk(health),
            ])
        };
        let shard = |lo, hi, nodes| {
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(lo), Value::Int(hi)]),
                bulk("nodes"),
                Value::Array(nodes),
            ])
        };
        let reply = Value::Array(vec![
            shard(
                0,
                8191,
                vec![
                    node(7000, "master", "online"),
                    node(7003, "replica", "online"),
                ],
            ),
            shard(8192, 16383, vec![node(7001, "master", "failed")]),
        ]);
        let map = SlotMap::from_shards(&reply).expect("a map");
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(8191), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(8192), None);
        assert_eq!(map.masters(), 1);
        assert_ne!(map, SlotMap::default(), "a change is seen");
    }
}
