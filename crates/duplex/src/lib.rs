//! Duplex: a real-time messaging gateway. WebSocket clients on one side,
//! channels in the middle, an in-memory or Redis broker on the other.
//!
//! # Layout (in the order a message flows)
//!
//! - [`config`]: settings from flags, `DUPLEX_*` environment and TOML.
//! - [`auth`]: connection tokens (JWT): who a client is.
//! - [`server`]: listener, routes, graceful shutdown.
//! - [`tls`]: the certificate and key for `wss://` and `https://`.
//! - [`transport`]: WebSocket upgrade, per-connection reader and writer
//!   tasks, the bounded outbound queue.
//! - `session`: one client's state machine (plain mode, native protocol).
//! - [`node`]: the handle that wires the hub to the broker.
//! - [`permissions`]: namespaces: who may subscribe and publish where.
//! - [`hub`]: channel → local subscribers; fan-out of shared frame bytes.
//! - [`broker`]: the broker abilities (`PubSub`, `UpstreamLog`), the memory and Redis brokers.
//! - [`api`]: HTTP publish API, info, health.
//! - [`control`]: orders for every node (disconnect, send to one connection)
//!   on the broker's `#control` channel.
//! - `heartbeat`: one sweeper that pings clients and drops dead ones.
//! - [`stats`]: counters for everything dropped or cut; [`metrics`] shows
//!   them to Prometheus.
//!
//! The wire formats (frames, JSON protocol, codes) live in the pure
//! `duplex-protocol` crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod control;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod message;
pub mod metrics;
pub mod node;
pub mod permissions;
pub mod server;
pub mod stats;
pub mod tls;
pub mod transport;

mod heartbeat;
mod limits;
mod rate;
mod session;
mod throttle;
