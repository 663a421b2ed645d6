//! Client messages up to the backends, and the calls waiting for their
//! answers: below the node, which wires them to connections and the broker.
//!
//! - [`route`]: where a message goes (its channel's namespace's stream or
//!   URL, else the node's);
//! - [`budget`]: the node's byte budget per destination;
//! - [`body`]: what a backend reads (a stream entry, or the same fields as
//!   a JSON body);
//! - [`http`]: the HTTP upstream's driver, signing with [`signature`];
//! - [`call`] and [`pending`]: a call's reply and outcome, and the table
//!   of calls waiting for one with its bounds and fair shares.
//!
//! Streams themselves are the broker's (`broker::UpstreamLog`); the node
//! (`node::upstream`, `node::rpc`) decides per message between stream and
//! URL, charges the budgets, and answers the client.

pub(crate) mod body;
pub(crate) mod budget;
pub(crate) mod call;
pub(crate) mod http;
pub(crate) mod pending;
pub(crate) mod route;
pub(crate) mod signature;

pub(crate) use budget::{NodeBudget, OverBudget};
pub(crate) use call::{Answer, CallError, Full, Outcome};
pub(crate) use route::Route;
