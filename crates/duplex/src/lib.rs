//! Duplex: a real-time messaging gateway. WebSocket clients on one side,
//! channels in the middle, an in-memory or Redis broker on the other.
//!
//! # Layout (in the order a message flows, each module using only those below it)
//!
//! - [`server`]: listener, accept loop, TLS handshake, reloads, graceful shutdown.
//! - [`api`]: the HTTP layer: the router and its state, the `Host` and body
//!   guards, the WebSocket upgrade handlers (`/`, `/ws`), the HTTP API, the console.
//! - [`transport`]: bytes <-> WebSocket frames: one reader and one writer
//!   task per connection, the socket table.
//! - `session`: one client's rules: plain mode and the native protocol,
//!   tokens, permissions, rate limits.
//! - `heartbeat`: one sweeper that pings clients and drops dead ones;
//!   [`metrics`]: the counters for Prometheus.
//! - [`node`]: the registry of connections and the wiring of hub, broker and
//!   upstream (rpc, messages up, orders between nodes).
//! - `upstream`: client messages up to the backends: routes, byte budgets,
//!   entry and body formats, the HTTP upstream driver, the calls waiting
//!   for answers.
//! - [`conn`]: the client handle below the node: its bounded outbound queue,
//!   write batching and pressure.
//! - [`hub`]: channel -> local subscribers; fan-out of shared frame bytes.
//! - [`broker`]: the broker abilities (`PubSub`, `UpstreamLog`, `History`),
//!   the memory and Redis brokers.
//! - Leaves: [`config`] (flags, `DUPLEX_*`, TOML, reloads), [`auth`] (JWT),
//!   [`permissions`] (namespaces), [`control`] (orders on `#control`),
//!   [`message`] (the publication), [`stats`] (every counter, declared
//!   once), [`tls`], and `backoff`, `limits`, `rate`, `throttle`.
//!
//! `tests/architecture.rs` checks that no import circle joins these modules;
//! docs/ARCHITECTURE.md draws the picture.
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
mod upstream;

mod backoff;
mod heartbeat;
mod limits;
mod rate;
mod session;
mod throttle;
