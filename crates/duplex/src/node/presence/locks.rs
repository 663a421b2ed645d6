//! One async lock per presence channel, made on demand and dropped with
//! its last holder or waiter: a channel's joins, leaves, rejoins and the
//! pushes of its sweeps run one at a time, and, unlike the subscription
//! stripe locks, a slow broker call on one channel holds up no other.

use std::collections::HashMap;
use std::sync::Arc;

use duplex_protocol::channel::ChannelName;
use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The per-channel locks; entries exist only while someone holds or waits.
#[derive(Debug, Default)]
pub(super) struct ChannelLocks {
    locks: Mutex<HashMap<ChannelName, Arc<AsyncMutex<()>>>>,
}

/// Holds one channel's lock; dropping it removes the entry when nobody waits.
pub(super) struct ChannelGuard<'a> {
    locks: &'a ChannelLocks,
    channel: ChannelName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl ChannelLocks {
    /// Waits for `channel`'s lock.
    pub(super) async fn lock(&self, channel: &ChannelName) -> ChannelGuard<'_> {
        let lock = Arc::clone(self.locks.lock().entry(channel.clone()).or_default());
        ChannelGuard {
            locks: self,
            channel: channel.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().len()
    }
}

impl Drop for ChannelGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.locks.lock();
        // Clones are made under this map's lock: a count of one (the map's)
        // means nobody holds or waits, and nobody can start to meanwhile.
        if locks
            .get(&self.channel)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s, 64).expect("valid")
    }

    #[tokio::test]
    async fn one_holder_per_channel_and_no_entry_left_behind() {
        let locks = Arc::new(ChannelLocks::default());
        let first = locks.lock(&name("a")).await;
        // Another channel is not held up.
        drop(locks.lock(&name("b")).await);
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _g = locks.lock(&name("a")).await;
            })
        };
        // The waiter cannot get in while `first` holds the lock.
        let blocked = tokio::time::timeout(Duration::from_millis(50), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(blocked.is_err(), "a second holder got in");
        assert_eq!(locks.len(), 1, "the waited-on entry stays");
        drop(first);
        waiter.await.expect("waiter ran");
        assert_eq!(locks.len(), 0, "no entry outlives its last holder");
    }
}
