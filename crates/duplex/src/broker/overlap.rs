//! Deployments sharing one Redis whose channel spaces overlap.
//!
//! Every node subscribes `<redis_prefix>#control`, so `PUBSUB CHANNELS
//! *#control` lists the prefix of every live deployment on a Redis. Reserved
//! channels never collide across prefixes (duplex_protocol::channel), but
//! ordinary ones do when one prefix is a prefix of another's: with `a` and
//! `ab`, channel `bc` of the first and channel `c` of the second are both
//! Redis channel `abc`, so their clients read and write each other's
//! channels. The Redis broker asks Redis and logs [`overlap_warning`] when
//! [`overlapping_prefixes`] finds such a neighbour.
//!
//! Pure: the broker does the I/O.

/// The suffix of every node's order channel, after its deployment's prefix.
const CONTROL_SUFFIX: &[u8] = b"#control";

/// The prefixes of the other live deployments whose channel space overlaps
/// ours (`own` is a prefix of theirs or theirs of `own`, and they differ),
/// sorted and without repeats, from the channels `PUBSUB CHANNELS *#control`
/// lists. A channel whose prefix part holds `#` (no current node's prefix
/// can: the config refuses it) or is not UTF-8 is ignored: it is not a
/// deployment this version can tell apart from a client's channel name.
pub(crate) fn overlapping_prefixes(own: &str, live_control_channels: &[Vec<u8>]) -> Vec<String> {
    let own = own.as_bytes();
    let mut found: Vec<String> = live_control_channels
        .iter()
        .filter_map(|channel| channel.strip_suffix(CONTROL_SUFFIX))
        .filter(|prefix| !prefix.contains(&b'#') && *prefix != own)
        .filter(|prefix| prefix.starts_with(own) || own.starts_with(prefix))
        .filter_map(|prefix| std::str::from_utf8(prefix).ok())
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The log line for an operator whose deployment overlaps `others`: which
/// prefixes, what it means with one concrete channel, and what to do.
pub(crate) fn overlap_warning(own: &str, others: &[String]) -> String {
    let listed = others
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "redis_prefix {own:?} overlaps the prefix of other deployments on this Redis ({listed}): \
         one prefix starts the other, so some channel names of the two deployments are the same Redis channel"
    );
    if let Some(other) = others.first() {
        let (short, long) = if other.len() < own.len() {
            (other.as_str(), own)
        } else {
            (own, other.as_str())
        };
        let gap = &long[short.len()..];
        text.push_str(&format!(
            " (channel \"{gap}news\" with prefix {short:?} and channel \"news\" with prefix {long:?} are both Redis channel \"{long}news\")"
        ));
    }
    text.push_str(
        ", so their clients receive and publish each other's messages on such channels \
         (reserved #user:, #conn:, #control channels stay apart). \
         Give each deployment a prefix that is not a prefix of another's, e.g. \"app1:\" and \"app2:\" \
         (docs/AUTH.md, \"Sharing one Redis between deployments\")",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(prefixes: &[&str]) -> Vec<Vec<u8>> {
        prefixes
            .iter()
            .map(|p| format!("{p}#control").into_bytes())
            .collect()
    }

    #[test]
    fn a_prefix_of_another_overlaps_in_both_directions() {
        let redis = live(&["", "dx:", "a", "ab", "b"]);
        // The empty prefix is a prefix of every other.
        assert_eq!(overlapping_prefixes("", &redis), ["a", "ab", "b", "dx:"]);
        assert_eq!(overlapping_prefixes("dx:", &redis), [""]);
        assert_eq!(overlapping_prefixes("a", &redis), ["", "ab"]);
        assert_eq!(overlapping_prefixes("ab", &redis), ["", "a"]);
    }

    #[test]
    fn prefix_free_deployments_do_not_overlap() {
        let redis = live(&["app1:", "app2:", "app10:"]);
        assert!(overlapping_prefixes("app1:", &redis).is_empty());
        assert!(overlapping_prefixes("app2:", &redis).is_empty());
        // Our own channel, listed alone or many times (one per node), is no neighbour.
        assert!(overlapping_prefixes("app1:", &live(&["app1:", "app1:"])).is_empty());
        assert!(overlapping_prefixes("x", &[]).is_empty());
    }

    #[test]
    fn repeats_are_listed_once_and_odd_channels_ignored() {
        let mut redis = live(&["ab", "ab", "abc"]);
        redis.push(b"a#b#control".to_vec()); // '#' in the prefix part: no current node
        redis.push(b"ab\xff#control".to_vec()); // not UTF-8
        redis.push(b"abcontrol".to_vec()); // not an order channel
        redis.push(b"#control".to_vec()); // the empty prefix
        assert_eq!(overlapping_prefixes("a", &redis), ["", "ab", "abc"]);
    }

    #[test]
    fn the_warning_names_the_prefixes_an_example_and_the_fix() {
        let text = overlap_warning("a", &["ab".to_string(), "abc".to_string()]);
        assert!(text.contains(r#"redis_prefix "a""#), "{text}");
        assert!(text.contains(r#"("ab", "abc")"#), "{text}");
        assert!(
            text.contains(r#"channel "bnews" with prefix "a" and channel "news" with prefix "ab" are both Redis channel "abnews""#),
            "{text}"
        );
        assert!(text.contains("not a prefix of another's"), "{text}");
        // Ours the longer one: the example turns around.
        let text = overlap_warning("dx:", &[String::new()]);
        assert!(
            text.contains(
                r#"channel "dx:news" with prefix "" and channel "news" with prefix "dx:""#
            ),
            "{text}"
        );
    }
}
