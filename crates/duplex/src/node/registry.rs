//! The node's registry of connections: admission against the node, address
//! and user limits, registration, lookup by number, removal.

use super::*;

impl Node {
    /// Creates and registers a connection.
    pub(crate) fn register(&self, wire: Wire, remote: SocketAddr) -> Result<Arc<Conn>, Refused> {
        let config = self.config();
        self.admit(remote.ip())?;
        let seq = self.inner.next_seq.fetch_add(1, Relaxed);
        let limits = QueueLimits {
            max_bytes: config.max_queued_bytes,
            max_frames: config.max_queued_messages,
        };
        let conn = Conn::new(
            seq,
            &self.inner.id,
            wire,
            remote,
            limits,
            &self.inner.coalescer,
            self.now_ms(),
        );
        self.registry_shard(seq)
            .lock()
            .insert(seq, Arc::clone(&conn));
        Stats::bump(&self.inner.stats.connects);
        if wire == Wire::Native {
            Stats::bump(&self.inner.stats.native_connections);
        }
        Ok(conn)
    }

    /// Counts a connection of `user` against `max_connections_per_user`;
    /// the slot is released when dropped.
    pub(crate) fn claim_user(&self, user: &str) -> Result<Option<UserSlot>, usize> {
        let claimed = self.inner.users.claim(user);
        if claimed.is_err() {
            Stats::bump(&self.inner.stats.connections_refused);
        }
        claimed
    }

    /// A connection's place in `max_subscriptions_per_ip`, empty until it
    /// subscribes; given back when dropped.
    pub(crate) fn address_subscriptions(&self, conn: &Conn) -> AddressSubscriptions {
        self.inner.address_subscriptions.share(conn.remote.ip())
    }

    /// Counts a new connection against the node and per-address limits.
    fn admit(&self, ip: IpAddr) -> Result<(), Refused> {
        if !self.inner.handshakes.allow(ip) {
            Stats::bump(&self.inner.stats.connections_refused);
            return Err(Refused::HandshakeRate(self.config().max_handshakes_per_ip));
        }
        let refused = self.admit_counted(ip);
        if refused.is_err() {
            Stats::bump(&self.inner.stats.connections_refused);
        }
        refused
    }

    fn admit_counted(&self, ip: IpAddr) -> Result<(), Refused> {
        let config = self.config();
        let open = self.inner.stats.connections.fetch_add(1, Relaxed);
        if config.max_connections > 0 && open >= config.max_connections as u64 {
            self.inner.stats.connections.fetch_sub(1, Relaxed);
            return Err(Refused::NodeFull(config.max_connections));
        }
        if config.max_connections_per_ip > 0 {
            let mut per_ip = self.inner.per_ip.lock();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= config.max_connections_per_ip {
                drop(per_ip);
                self.inner.stats.connections.fetch_sub(1, Relaxed);
                return Err(Refused::AddressFull(config.max_connections_per_ip));
            }
            *count += 1;
        }
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        self.inner.stats.connections.fetch_sub(1, Relaxed);
        if self.config().max_connections_per_ip > 0 {
            let mut per_ip = self.inner.per_ip.lock();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }

    /// Removes a connection and all its subscriptions.
    pub(crate) async fn deregister(
        &self,
        conn: &Conn,
        channels: impl IntoIterator<Item = ChannelName>,
    ) {
        for channel in channels {
            self.unsubscribe(conn, &channel).await;
        }
        self.inner.revoked.forget(conn.seq);
        self.registry_shard(conn.seq).lock().remove(&conn.seq);
        self.forget_calls(conn.seq);
        if conn.wire == Wire::Native {
            self.inner.stats.native_connections.fetch_sub(1, Relaxed);
        }
        self.release(conn.remote.ip());
    }

    fn registry_shard(&self, seq: u64) -> &RegistryShard {
        &self.inner.registry[seq as usize % REGISTRY_SHARDS]
    }

    /// The connection with this node-local sequence number, if still open.
    pub(crate) fn connection_by_seq(&self, seq: u64) -> Option<Arc<Conn>> {
        self.registry_shard(seq).lock().get(&seq).cloned()
    }

    /// Write coalescing (see `conn::coalesce`).
    pub(crate) fn coalescer(&self) -> &Arc<Coalescer> {
        &self.inner.coalescer
    }

    /// A snapshot of every open connection (for heartbeats and shutdown).
    pub(crate) fn connections(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::new();
        for shard in self.inner.registry.iter() {
            all.extend(shard.lock().values().cloned());
        }
        all
    }
}

/// The first connection number of this run: the time in microseconds, so
/// that a node restarted with the same `node_id` never hands out an id
/// (`<node>.<n>`) of a previous run (a backend's stale `#conn:`, reply or
/// disconnect then reaches nobody), as long as the clock does not go back
/// by more than the previous run lasted. Under 2^53 until the year 2255,
/// so ids stay exact in JavaScript.
pub(super) fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 11)
        })
        .max(1)
}
