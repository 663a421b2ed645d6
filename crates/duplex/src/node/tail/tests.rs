use super::*;
use bytes::Bytes;
use duplex_protocol::ws::MessageKind;

const LIMITS: Limits = Limits {
    cap: 5,
    ttl: Duration::from_secs(60),
    meta_ttl: Duration::from_secs(600),
};

fn news() -> ChannelName {
    ChannelName::parse("news", 64).unwrap()
}

fn publication(offset: u64, epoch: &str) -> Publication {
    Publication {
        channel: news(),
        payload: Bytes::from(format!("m{offset}")),
        kind: MessageKind::Text,
        exclude: None,
        position: Some(Position {
            offset,
            epoch: epoch.into(),
        }),
    }
}

fn page(epoch: &str, top: u64, offsets: &[u64]) -> HistoryPage {
    HistoryPage {
        top: Position {
            offset: top,
            epoch: epoch.into(),
        },
        publications: offsets.iter().map(|&o| publication(o, epoch)).collect(),
    }
}

fn since(offset: u64) -> Query {
    Query {
        since: Some(offset),
        limit: 100,
        reverse: false,
    }
}

const POSITION: Query = Query {
    since: None,
    limit: 0,
    reverse: false,
};

fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications
        .iter()
        .map(|p| p.position.as_ref().unwrap().offset)
        .collect()
}

#[test]
fn nothing_is_answered_before_a_subscriber_opened_the_channel() {
    let tails = Tails::default();
    tails.note_held(&publication(1, "e"));
    assert!(tails.serve(&news(), POSITION).is_none(), "not followed");
    assert_eq!(
        tails.delivered(&news()).unwrap().offset,
        1,
        "repairs still know"
    );
    let ticket = tails.open(&news(), LIMITS).unwrap();
    assert!(
        tails.serve(&news(), POSITION).is_none(),
        "what arrived before the subscription is not trusted"
    );
    tails.merge(&news(), ticket, &page("e", 3, &[2, 3]));
    let answered = tails.serve(&news(), since(1)).unwrap();
    assert_eq!(answered.top.offset, 3);
    assert_eq!(offsets(&answered), vec![2, 3]);
    assert!(tails.serve(&news(), since(0)).is_none(), "1 is not held");
}

#[test]
fn a_run_grows_by_the_next_offset_and_starts_again_after_a_gap() {
    let tails = Tails::default();
    let ticket = tails.open(&news(), LIMITS).unwrap();
    tails.merge(&news(), ticket, &page("e", 2, &[1, 2]));
    tails.note_held(&publication(2, "e")); // late copy
    tails.note_held(&publication(3, "e"));
    assert_eq!(
        offsets(&tails.serve(&news(), since(0)).unwrap()),
        vec![1, 2, 3]
    );
    tails.note_held(&publication(5, "e")); // 4 never came
    assert!(tails.serve(&news(), since(3)).is_none());
    assert_eq!(offsets(&tails.serve(&news(), since(4)).unwrap()), vec![5]);
    tails.note_held(&publication(1, "f")); // a new epoch
    let answered = tails.serve(&news(), since(0)).unwrap();
    assert_eq!((&*answered.top.epoch, offsets(&answered)), ("f", vec![1]));
}

#[test]
fn a_read_joins_the_live_run_before_or_after_it() {
    let tails = Tails::default();
    let ticket = tails.open(&news(), LIMITS).unwrap();
    // Live ones arrived while the read ran.
    tails.note_held(&publication(4, "e"));
    tails.note_held(&publication(5, "e"));
    tails.merge(&news(), ticket, &page("e", 4, &[2, 3, 4]));
    assert_eq!(
        offsets(&tails.serve(&news(), since(1)).unwrap()),
        vec![2, 3, 4, 5]
    );
    // A read that reached further than what arrived live yet.
    tails.merge(&news(), ticket, &page("e", 7, &[6, 7]));
    assert_eq!(tails.serve(&news(), POSITION).unwrap().top.offset, 7);
    tails.note_held(&publication(6, "e"));
    assert_eq!(
        offsets(&tails.serve(&news(), since(5)).unwrap()),
        vec![6, 7]
    );
}

#[test]
fn a_run_keeps_at_most_its_cap_and_the_node_budget() {
    let tails = Tails::default();
    let ticket = tails.open(&news(), LIMITS).unwrap();
    tails.merge(&news(), ticket, &page("e", 0, &[]));
    for offset in 1..=8 {
        tails.note_held(&publication(offset, "e"));
    }
    assert!(tails.serve(&news(), since(2)).is_none(), "3 was dropped");
    assert_eq!(
        offsets(&tails.serve(&news(), since(3)).unwrap()),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(tails.bytes(), 10);
    tails.remove(&news());
    assert_eq!(tails.bytes(), 0);
}

#[test]
fn position_only_subscribers_keep_no_publications() {
    let tails = Tails::default();
    let limits = Limits { cap: 0, ..LIMITS };
    let ticket = tails.open(&news(), limits).unwrap();
    tails.merge(&news(), ticket, &page("e", 3, &[]));
    tails.note_held(&publication(4, "e"));
    let answered = tails.serve(&news(), POSITION).unwrap();
    assert_eq!(answered.top.offset, 4);
    assert!(tails.serve(&news(), since(3)).is_none());
    assert_eq!(tails.bytes(), 0);
}

#[test]
fn a_reconnect_makes_runs_stale_until_repaired() {
    let tails = Tails::default();
    let ticket = tails.open(&news(), LIMITS).unwrap();
    tails.merge(&news(), ticket, &page("e", 2, &[1, 2]));
    let to_repair = tails.stale_all();
    assert_eq!(to_repair.len(), 1);
    assert_eq!(to_repair[0].1.offset, 2);
    assert!(tails.serve(&news(), POSITION).is_none(), "stale");
    assert!(
        tails.open(&news(), LIMITS).is_none(),
        "no ticket while stale"
    );
    tails.merge(&news(), ticket, &page("e", 3, &[3]));
    tails.note_held(&publication(3, "e")); // the repair delivers
    tails.repaired(&news());
    assert_eq!(
        offsets(&tails.serve(&news(), since(0)).unwrap()),
        vec![1, 2, 3]
    );
}

#[test]
fn a_merge_from_before_the_channel_was_left_is_dropped() {
    let tails = Tails::default();
    let old = tails.open(&news(), LIMITS).unwrap();
    tails.remove(&news());
    let ticket = tails.open(&news(), LIMITS).unwrap();
    tails.merge(&news(), old, &page("e", 9, &[8, 9]));
    assert!(tails.serve(&news(), POSITION).is_none());
    tails.merge(&news(), ticket, &page("e", 10, &[10]));
    assert_eq!(offsets(&tails.serve(&news(), since(9)).unwrap()), vec![10]);
}

#[test]
fn cache_mode_answers_the_latest() {
    let tails = Tails::default();
    let limits = Limits { cap: 1, ..LIMITS };
    let latest = Query {
        since: None,
        limit: 1,
        reverse: true,
    };
    let ticket = tails.open(&news(), limits).unwrap();
    tails.merge(&news(), ticket, &page("e", 0, &[]));
    assert_eq!(
        tails.serve(&news(), latest).unwrap().top.offset,
        0,
        "empty channel"
    );
    tails.note_held(&publication(1, "e"));
    tails.note_held(&publication(2, "e"));
    assert_eq!(offsets(&tails.serve(&news(), latest).unwrap()), vec![2]);
}

impl Tails {
    fn note_held(&self, p: &Publication) {
        self.note(p, || true);
    }
}

#[test]
fn a_late_copy_for_a_channel_the_node_left_makes_no_entry() {
    let tails = Tails::default();
    tails.note(&publication(1, "e"), || false);
    assert!(tails.delivered(&news()).is_none());
    tails.note(&publication(2, "e"), || true);
    assert_eq!(tails.delivered(&news()).unwrap().offset, 2);
    tails.note(&publication(3, "e"), || false);
    assert_eq!(
        tails.delivered(&news()).unwrap().offset,
        3,
        "known: followed"
    );
}

#[test]
fn a_live_gap_is_refused_and_not_noted() {
    let tails = Tails::default();
    tails.note_held(&publication(1, "e"));
    let gap = tails.note_live(&publication(4, "e"), || true);
    assert_eq!(gap.unwrap_err().offset, 1);
    assert_eq!(tails.delivered(&news()).unwrap().offset, 1, "not noted");
    assert!(tails.note_live(&publication(2, "e"), || true).is_ok());
    assert!(
        tails.note_live(&publication(1, "f"), || true).is_ok(),
        "a new epoch is no gap"
    );
}
