//! The native session's command handling, end to end on a memory-broker node:
//! two clients send sequences of arbitrary commands (valid and invalid mixed)
//! through `NativeSession::on_message`, on a current-thread tokio runtime.
//!
//! A model of each client (channels held, connected or not) predicts every
//! reply. Checks: no panic; exactly one reply per command, carrying its id,
//! last in the client's queue; success or the exact error code as the model
//! says; a publish reaches every subscriber (either client) exactly once with
//! its bytes intact, and nobody else; binary frames and publish floods close
//! the connection without a reply; after every step the node's subscription
//! gauge and channel table match the model; a client that leaves releases
//! exactly the channels the model says; at the end the node holds nothing.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use base64::Engine as _;
use bytes::Bytes;
use duplex::config::Config;
use duplex::fuzzing::NativeClient;
use duplex::node::Node;
use duplex_fuzz::{assert_push_data, parse_server_frame, ServerMessage};
use duplex_protocol::channel::ChannelName;
use duplex_protocol::code::{CloseCode, ErrorCode};
use duplex_protocol::command::{self, ChannelsParams, Command, MAX_ID};
use duplex_protocol::payload::bytes_from_json;
use duplex_protocol::ws::MessageKind;
use duplex_protocol::PROTOCOL_VERSION;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Publish rate limit (0 = off), taken modulo 5.
    rate: u8,
    /// Subscription limit per connection, modulo 7.
    max_subscriptions: u8,
    /// Longest channel name, 1 + this modulo 24.
    max_channel_length: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Send(Who, Message),
    /// The client leaves (as its reader task would) and a fresh one takes its place.
    Leave(Who),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    A,
    B,
}

#[derive(Arbitrary, Debug)]
enum Message {
    Connect {
        id: Id,
        protocol: Option<u8>,
        name: Option<String>,
    },
    Subscribe {
        id: Id,
        channel: Option<Chan>,
        channels: Vec<Chan>,
    },
    Unsubscribe {
        id: Id,
        channel: Option<Chan>,
        channels: Vec<Chan>,
    },
    Publish {
        id: Id,
        channel: Chan,
        data: Data,
    },
    Ping {
        id: Id,
    },
    /// Any method with raw (possibly invalid) params.
    Other {
        id: Id,
        method: String,
        params: String,
    },
    /// Any text at all.
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Id {
    Small(u8),
    Max,
    TooBig,
    Negative,
    Fraction,
    Quoted,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Chan {
    Known(u8),
    Any(String),
}

const KNOWN_CHANNELS: [&str; 8] = [
    "a",
    "b",
    "news",
    "chat:1",
    "#server",
    "two words",
    "",
    "a-long-channel-name",
];

#[derive(Arbitrary, Debug)]
enum Data {
    Json(u8),
    Text(String),
    Base64(Vec<u8>),
    NotBase64(String),
    Raw(String),
}

const JSON_DATA: [&str; 7] = [
    r#"{"a":1}"#,
    "[1,2]",
    "42",
    "null",
    r#""quoted""#,
    r#""\ud800""#,
    " [ {} ] ",
];

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl Id {
    fn json(&self) -> Option<String> {
        Some(match self {
            Id::Small(n) => n.to_string(),
            Id::Max => MAX_ID.to_string(),
            Id::TooBig => (MAX_ID + 1).to_string(),
            Id::Negative => "-1".to_string(),
            Id::Fraction => "1.5".to_string(),
            Id::Quoted => "\"1\"".to_string(),
            Id::Missing => return None,
        })
    }
}

impl Chan {
    fn name(&self) -> &str {
        match self {
            Chan::Known(i) => KNOWN_CHANNELS[usize::from(*i) % KNOWN_CHANNELS.len()],
            Chan::Any(s) => s,
        }
    }
}

fn command_text(id: &Id, method: &str, params: Option<&str>) -> String {
    let mut fields = Vec::new();
    if let Some(id) = id.json() {
        fields.push(format!(r#""id":{id}"#));
    }
    fields.push(format!(r#""method":{}"#, json_str(method)));
    if let Some(params) = params {
        fields.push(format!(r#""params":{params}"#));
    }
    format!("{{{}}}", fields.join(","))
}

fn channels_params(channel: &Option<Chan>, channels: &[Chan]) -> String {
    let mut fields = Vec::new();
    if let Some(c) = channel {
        fields.push(format!(r#""channel":{}"#, json_str(c.name())));
    }
    if !channels.is_empty() {
        let list: Vec<String> = channels.iter().map(|c| json_str(c.name())).collect();
        fields.push(format!(r#""channels":[{}]"#, list.join(",")));
    }
    format!("{{{}}}", fields.join(","))
}

impl Message {
    fn encode(&self) -> (MessageKind, Bytes) {
        let text = match self {
            Message::Binary(bytes) => return (MessageKind::Binary, Bytes::from(bytes.clone())),
            Message::Text(text) => text.clone(),
            Message::Connect { id, protocol, name } => {
                let mut fields = Vec::new();
                if let Some(v) = protocol {
                    fields.push(format!(r#""protocol":{v}"#));
                }
                if let Some(name) = name {
                    fields.push(format!(r#""name":{}"#, json_str(name)));
                }
                command_text(id, "connect", Some(&format!("{{{}}}", fields.join(","))))
            }
            Message::Subscribe {
                id,
                channel,
                channels,
            } => command_text(id, "subscribe", Some(&channels_params(channel, channels))),
            Message::Unsubscribe {
                id,
                channel,
                channels,
            } => command_text(id, "unsubscribe", Some(&channels_params(channel, channels))),
            Message::Publish { id, channel, data } => {
                let (data, base64) = match data {
                    Data::Json(i) => (
                        JSON_DATA[usize::from(*i) % JSON_DATA.len()].to_string(),
                        false,
                    ),
                    Data::Text(s) => (json_str(s), false),
                    Data::Base64(raw) => (
                        json_str(&base64::engine::general_purpose::STANDARD.encode(raw)),
                        true,
                    ),
                    Data::NotBase64(s) => (json_str(s), true),
                    Data::Raw(s) => (s.clone(), false),
                };
                let encoding = if base64 {
                    r#","encoding":"base64""#
                } else {
                    ""
                };
                let params = format!(
                    r#"{{"channel":{},"data":{data}{encoding}}}"#,
                    json_str(channel.name())
                );
                command_text(id, "publish", Some(&params))
            }
            Message::Ping { id } => command_text(id, "ping", None),
            Message::Other { id, method, params } => command_text(id, method, Some(params)),
        };
        (MessageKind::Text, Bytes::from(text))
    }
}

/// One client and what the model says it holds.
struct Slot {
    client: NativeClient,
    channels: BTreeSet<String>,
    connected: bool,
}

impl Slot {
    fn new(node: &Node) -> Slot {
        Slot {
            client: NativeClient::connect(node).expect("no connection limit reached"),
            channels: BTreeSet::new(),
            connected: false,
        }
    }
}

struct World {
    node: Node,
    slots: [Slot; 2],
    rate_limited: bool,
    max_subscriptions: usize,
    max_channel_length: usize,
}

/// What the model expects a command to answer: success, or this error code.
type Expected = Result<(), ErrorCode>;

impl World {
    fn parse_channel(&self, name: &str) -> Result<(), ErrorCode> {
        let channel = ChannelName::parse(name, self.max_channel_length)
            .map_err(|_| ErrorCode::InvalidChannel)?;
        if channel.is_reserved() {
            return Err(ErrorCode::PermissionDenied);
        }
        Ok(())
    }

    /// The channel a `send` or `rpc` may name.
    fn parse_optional_channel(&self, name: Option<&str>) -> Result<(), ErrorCode> {
        name.map_or(Ok(()), |n| self.parse_channel(n))
    }

    fn parse_channels(&self, names: &[String]) -> Result<(), ErrorCode> {
        if names.is_empty() {
            return Err(ErrorCode::BadRequest);
        }
        names.iter().try_for_each(|n| self.parse_channel(n))
    }

    /// Releases a client as its reader task does and puts a fresh one in its place.
    async fn replace(&mut self, who: usize) {
        let fresh = Slot::new(&self.node);
        let old = std::mem::replace(&mut self.slots[who], fresh);
        let released = old.client.disconnect(&self.node).await;
        let unique: BTreeSet<String> = released.iter().cloned().collect();
        assert_eq!(unique.len(), released.len(), "a channel released twice");
        assert_eq!(
            unique, old.channels,
            "released channels differ from the model"
        );
    }

    /// The node's bookkeeping agrees with the model.
    fn check_node(&self, connections: u64) {
        let info = self.node.info();
        assert_eq!(info.connections, connections);
        let held: usize = self.slots.iter().map(|s| s.channels.len()).sum();
        assert_eq!(info.subscriptions, held as u64, "subscription gauge");
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for slot in &self.slots {
            for channel in &slot.channels {
                *expected.entry(channel.clone()).or_default() += 1;
            }
        }
        let actual: BTreeMap<String, usize> = self
            .node
            .channels()
            .into_iter()
            .map(|(c, n)| (c.as_str().to_owned(), n))
            .collect();
        assert_eq!(actual, expected, "hub channel table");
        assert_eq!(info.channels, expected.len());
    }

    async fn send(&mut self, who: usize, message: &Message) {
        let (kind, payload) = message.encode();
        let request = (kind == MessageKind::Text).then(|| command::decode(&payload));
        let closed = self.slots[who]
            .client
            .on_message(&self.node, kind, payload.clone())
            .await;
        let mut frames: [Vec<Bytes>; 2] = [
            self.slots[0].client.take_frames(),
            self.slots[1].client.take_frames(),
        ];
        let other = 1 - who;
        let request = match request {
            None => {
                let (code, _) = closed.expect("binary frames close the connection");
                assert_eq!(code, CloseCode::UnsupportedData.as_u16());
                assert!(frames[who].is_empty() && frames[other].is_empty());
                return self.replace(who).await;
            }
            Some(Err(e)) => {
                assert_eq!(closed, None);
                assert!(frames[other].is_empty());
                assert_eq!(frames[who].len(), 1, "one reply per command");
                let reply = parse_server_frame(&frames[who][0]);
                assert_eq!(reply.id, e.id);
                assert_eq!(reply.error.expect("error reply").code, e.code.as_u32());
                return;
            }
            Some(Ok(request)) => request,
        };
        if let Some((code, _)) = closed {
            assert!(
                matches!(request.command, Command::Publish(_) | Command::Send(_) | Command::Rpc(_)),
                "only floods close"
            );
            assert!(self.rate_limited);
            assert_eq!(code, CloseCode::TooManyRequests.as_u16());
            assert!(frames[who].is_empty() && frames[other].is_empty());
            return self.replace(who).await;
        }
        let own = std::mem::take(&mut frames[who]);
        let (reply_frame, pushes) = own.split_last().expect("one reply per command");
        let reply = parse_server_frame(reply_frame);
        assert_eq!(reply.id, Some(request.id), "reply carries the command's id");
        assert!(reply.push.is_none());
        let outcome = match (&reply.result, &reply.error) {
            (Some(_), None) => Ok(()),
            (None, Some(error)) => Err(error.code),
            _ => panic!("a reply has exactly one of result and error: {reply:?}"),
        };
        if outcome == Err(ErrorCode::TooManyRequests.as_u32()) {
            assert!(matches!(request.command, Command::Publish(_) | Command::Send(_) | Command::Rpc(_)) && self.rate_limited);
            assert!(pushes.is_empty() && frames[other].is_empty());
            return;
        }
        let mut delivered: [Vec<Bytes>; 2] = Default::default();
        delivered[who] = pushes.to_vec();
        delivered[other] = std::mem::take(&mut frames[other]);
        let expected = match request.command {
            Command::Connect(params) => {
                let expected = if self.slots[who].connected {
                    Err(ErrorCode::AlreadyConnected)
                } else if params.protocol.is_some_and(|v| v != PROTOCOL_VERSION) {
                    Err(ErrorCode::UnsupportedVersion)
                } else {
                    Ok(())
                };
                self.slots[who].connected |= expected.is_ok();
                expected
            }
            Command::Subscribe(params) => self.subscribe(who, params, &reply),
            Command::Unsubscribe(params) => self.unsubscribe(who, params, &reply),
            Command::Publish(params) => {
                self.slots[who].connected = true;
                let checked = self.parse_channel(&params.channel).and_then(|()| {
                    bytes_from_json(&params.data, params.encoding)
                        .map_err(|_| ErrorCode::BadRequest)
                });
                match checked {
                    Ok((bytes, kind)) => {
                        for (slot, frames) in self.slots.iter().zip(&mut delivered) {
                            if slot.channels.contains(&params.channel) {
                                assert_eq!(frames.len(), 1, "one push per subscriber");
                                let push = parse_server_frame(&frames[0]);
                                assert_eq!(push.push.as_deref(), Some("message"));
                                assert_eq!(push.channel.as_deref(), Some(params.channel.as_str()));
                                assert_push_data(&push, &bytes, kind);
                                frames.clear();
                            }
                        }
                        Ok(())
                    }
                    Err(code) => Err(code),
                }
            }
            Command::Ping => {
                self.slots[who].connected = true;
                Ok(())
            }
            // The memory broker has no upstream: a bad channel first (no
            // namespaces here: only reserved or invalid names), bad data, then 102.
            Command::Send(params) => {
                self.slots[who].connected = true;
                self.parse_optional_channel(params.channel.as_deref())
                    .and_then(|()| match bytes_from_json(&params.data, params.encoding) {
                        Err(_) => Err(ErrorCode::BadRequest),
                        Ok(_) => Err(ErrorCode::UnknownMethod),
                    })
            }
            // Nor an HTTP upstream for rpcs: 102 (a bad method name is 101, at decode).
            Command::Rpc(params) => {
                self.slots[who].connected = true;
                self.parse_optional_channel(params.channel.as_deref())
                    .and(Err(ErrorCode::UnknownMethod))
            }
            // No token auth on this node: there is nothing to refresh.
            Command::Refresh(_) => {
                self.slots[who].connected = true;
                Err(ErrorCode::BadRequest)
            }
            other => panic!("a method the model does not know: {other:?}"),
        };
        assert!(
            delivered.iter().all(Vec::is_empty),
            "frames nobody should get: {delivered:?}"
        );
        assert_eq!(
            outcome,
            expected.map_err(ErrorCode::as_u32),
            "reply to {}",
            String::from_utf8_lossy(&payload)
        );
    }

    fn subscribe(
        &mut self,
        who: usize,
        params: ChannelsParams,
        reply: &ServerMessage<'_>,
    ) -> Expected {
        self.slots[who].connected = true;
        let (names, token) = params.into_names();
        self.parse_channels(&names)?;
        // A subscription token goes with exactly one channel (without token
        // auth on this node it grants nothing, and the default namespace
        // lets anyone subscribe).
        if token.is_some() && names.len() != 1 {
            return Err(ErrorCode::BadRequest);
        }
        let held = &mut self.slots[who].channels;
        let new: BTreeSet<&String> = names.iter().filter(|n| !held.contains(*n)).collect();
        if held.len() + new.len() > self.max_subscriptions {
            return Err(ErrorCode::LimitExceeded);
        }
        held.extend(names.iter().cloned());
        assert_channels_result(reply, &names);
        Ok(())
    }

    fn unsubscribe(
        &mut self,
        who: usize,
        params: ChannelsParams,
        reply: &ServerMessage<'_>,
    ) -> Expected {
        self.slots[who].connected = true;
        let (names, _token) = params.into_names();
        self.parse_channels(&names)?;
        for name in &names {
            self.slots[who].channels.remove(name);
        }
        assert_channels_result(reply, &names);
        Ok(())
    }
}

/// A subscribe or unsubscribe result lists the requested names in order.
fn assert_channels_result(reply: &ServerMessage<'_>, names: &[String]) {
    #[derive(serde::Deserialize)]
    struct ChannelsResult {
        channels: Vec<String>,
    }
    let result = reply.result.expect("a successful reply");
    let result: ChannelsResult = serde_json::from_str(result.get()).expect("channels result");
    assert_eq!(result.channels, names);
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|input: Input| {
    runtime().block_on(async {
        let rate = u32::from(input.rate % 5);
        let max_subscriptions = usize::from(input.max_subscriptions % 7);
        let max_channel_length = 1 + usize::from(input.max_channel_length % 24);
        let config = Config {
            node_id: "fuzz".to_string(),
            max_publish_rate: rate,
            max_subscriptions,
            max_channel_length,
            ..Config::default()
        };
        let node = Node::start(config).expect("memory broker node");
        let mut world = World {
            slots: [Slot::new(&node), Slot::new(&node)],
            rate_limited: rate != 0,
            max_subscriptions,
            max_channel_length,
            node,
        };
        for step in input.steps.iter().take(64) {
            match step {
                Step::Send(who, message) => world.send(*who as usize, message).await,
                Step::Leave(who) => world.replace(*who as usize).await,
            }
            world.check_node(2);
        }
        world.replace(0).await;
        world.replace(1).await;
        // The two fresh clients hold nothing; release them too.
        let World { node, slots, .. } = world;
        for slot in slots {
            assert!(slot.client.disconnect(&node).await.is_empty());
        }
        let info = node.info();
        assert_eq!(
            (info.connections, info.subscriptions, info.channels),
            (0, 0, 0)
        );
        assert!(node.channels().is_empty());
    });
});
