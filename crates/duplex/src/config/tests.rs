//! The config's layers, checks and defaults.

use super::*;

#[test]
fn layers_merge_in_order() {
    let flags = Settings {
        listen: Some("127.0.0.1:9000".parse().unwrap()),
        ..Default::default()
    };
    let file: Settings = toml::from_str(
        "listen = \"127.0.0.1:8000\"\ndefault_channel = \"news\"\nping_interval = \"3s\"",
    )
    .unwrap();
    let config = flags.or(file).resolve().unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.default_channel, "news");
    assert_eq!(config.ping_interval, Duration::from_secs(3));
    assert_eq!(config.max_message_size, 65536);
    assert!(config.redis_url().is_none());
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    let bad = Settings {
        default_channel: Some("has space".into()),
        ..Default::default()
    };
    assert!(matches!(
        bad.resolve(),
        Err(ConfigError::Invalid {
            name: "default_channel",
            ..
        })
    ));
    let bad = Settings {
        redis: Some("http://nope".into()),
        ..Default::default()
    };
    assert!(bad.resolve().is_err());
    // '#' never inside a prefix, nor inside a name that does not start with it.
    let bad = Settings {
        redis_prefix: Some("dx#".into()),
        ..Default::default()
    };
    let err = bad.resolve().unwrap_err().to_string();
    assert!(err.contains("redis_prefix") && err.contains("'#'"), "{err}");
    let prefixed = Settings {
        redis_prefix: Some("dx:".into()),
        ..Default::default()
    };
    assert!(prefixed.resolve().is_ok());
    let bad = Settings {
        default_channel: Some("dx:#control".into()),
        ..Default::default()
    };
    assert!(bad.resolve().is_err());
    let public = Settings {
        listen: Some("0.0.0.0:1234".parse().unwrap()),
        ..Default::default()
    };
    let err = public.clone().resolve().unwrap_err().to_string();
    assert!(err.contains("--insecure"), "{err}");
    let insecure = Settings {
        insecure: Some(true),
        ..public.clone()
    };
    assert!(insecure.resolve().is_ok());
    // Token auth alone is not enough: the HTTP API would still be open.
    let tokens_only = Settings {
        token_secret: Some("0123456789abcdef0123456789abcdef".into()),
        ..public.clone()
    };
    let err = tokens_only.clone().resolve().unwrap_err().to_string();
    assert!(err.contains("--api-key"), "{err}");
    let secured = Settings {
        api_key: Some("k1, k2".into()),
        ..tokens_only
    };
    let config = secured.clone().resolve().unwrap();
    assert_eq!(config.api_keys().collect::<Vec<_>>(), ["k1", "k2"]);
    assert!(config.warnings().is_empty());
    // A secret one token can give away is no authentication in public.
    let short = Settings {
        token_secret: Some("0123456789abcdef0123456789abcde".into()),
        ..secured
    };
    let err = short.clone().resolve().unwrap_err().to_string();
    assert!(
        err.contains("token_secret") && err.contains("31 bytes") && err.contains("--insecure"),
        "{err}"
    );
    let accepted = Settings {
        insecure: Some(true),
        ..short.clone()
    };
    let warnings = accepted.resolve().unwrap().warnings();
    assert!(warnings[0].contains("31 bytes"), "{warnings:?}");
    let loopback = Settings {
        listen: None,
        ..short
    };
    assert_eq!(loopback.resolve().unwrap().warnings().len(), 1);
}

#[test]
fn a_redis_address_without_scheme_gets_a_hint() {
    let bare = Settings {
        redis: Some("localhost:6379".into()),
        ..Default::default()
    };
    let err = bare.resolve().unwrap_err().to_string();
    assert!(err.contains("redis://localhost:6379"), "{err}");
    assert!(redis_url_problem("redis://localhost:6379/0").is_none());
}

#[test]
fn a_redis_cluster_url_names_its_nodes_and_refuses_the_ingest_stream() {
    let cluster = Settings {
        redis: Some("redis+cluster://127.0.0.1:7000,127.0.0.1:7001".into()),
        upstream_stream: Some("up".into()),
        ..Default::default()
    };
    assert!(cluster.clone().resolve().is_ok());
    let bad = Settings {
        redis: Some("redis+cluster://u:hunter2@nohost".into()),
        ..Default::default()
    };
    let err = bad.resolve().unwrap_err().to_string();
    assert!(
        err.contains("host:port") && !err.contains("hunter2"),
        "{err}"
    );
    let ingest = Settings {
        ingest_stream: Some("duplex:ingest".into()),
        ..cluster.clone()
    };
    let err = ingest.resolve().unwrap_err().to_string();
    assert!(err.contains("not supported on a Redis Cluster"), "{err}");
    let ns = |extra: &str| -> Settings {
        toml::from_str(&format!("[[namespaces]]\npattern = \"room:*\"\n{extra}\n")).unwrap()
    };
    let history = ns("history_size = 10\nhistory_ttl = \"1m\"");
    assert!(
        history.or(cluster.clone()).resolve().is_ok(),
        "history works"
    );
    assert!(
        ns("presence = true").or(cluster).resolve().is_ok(),
        "presence works"
    );
}

#[test]
fn redis_passwords_never_show_in_messages() {
    let bad = Settings {
        redis: Some("redis://user:hunter2@localhost:6379/notadb".into()),
        ..Default::default()
    };
    let err = bad.resolve().unwrap_err().to_string();
    assert!(!err.contains("hunter2") && err.contains("***"), "{err}");
    assert_eq!(redacted("redis://:pw@h:1/0"), "redis://:***@h:1/0");
    assert_eq!(redacted("redis://h:1"), "redis://h:1");
    assert_eq!(
        redacted("redis+sentinel://u:pw@a:1,b:2/m?sentinel_password=s"),
        "redis+sentinel://u:***@a:1,b:2/m?***"
    );
    assert_eq!(redacted("redis+sentinel://a,b/m"), "redis+sentinel://a,b/m");
    assert!(redis_url_problem("redis+sentinel://a:26379,b/mymaster/1").is_none());
    let problem = redis_url_problem("redis+sentinel://:pw@a:26379").expect("no master name");
    assert!(
        problem.contains("master name") && !problem.contains("pw"),
        "{problem}"
    );
}

#[test]
fn plain_upstream_needs_redis() {
    let memory = Settings {
        plain_frames: Some(PlainFrames::Both),
        ..Default::default()
    };
    let err = memory.clone().resolve().unwrap_err().to_string();
    assert!(
        err.contains("plain_frames") && err.contains("Redis"),
        "{err}"
    );
    let http = Settings {
        upstream_url: Some("http://127.0.0.1:9/up".into()),
        ..memory.clone()
    };
    assert!(
        http.resolve().is_ok(),
        "an HTTP upstream takes plain frames"
    );
    let redis = Settings {
        redis: Some("redis://127.0.0.1:6379".into()),
        ..memory
    };
    assert_eq!(redis.resolve().unwrap().plain_frames, PlainFrames::Both);
    let file: Settings = toml::from_str("plain_frames = \"upstream\"").unwrap();
    assert_eq!(file.plain_frames, Some(PlainFrames::Upstream));
}

#[test]
fn the_ingest_stream_needs_redis_and_its_own_stream() {
    let memory = Settings {
        ingest_stream: Some("duplex:ingest".into()),
        ..Default::default()
    };
    let err = memory.clone().resolve().unwrap_err().to_string();
    assert!(
        err.contains("invalid setting ingest_stream") && err.contains("needs Redis (--redis)"),
        "{err}"
    );
    let redis = Settings {
        redis: Some("redis://127.0.0.1:6379".into()),
        ..memory
    };
    assert_eq!(
        redis.clone().resolve().unwrap().ingest_stream,
        "duplex:ingest"
    );
    let upstream = Settings {
        ingest_stream: Some("duplex:upstream".into()),
        ..redis.clone()
    };
    let err = upstream.resolve().unwrap_err().to_string();
    assert!(err.contains("also an upstream stream"), "{err}");
    let file: Settings = toml::from_str(
        "ingest_stream = \"orders\"\n[[namespaces]]\npattern = \"o:*\"\nupstream_stream = \"orders\"\n",
    )
    .unwrap();
    let err = file.or(redis).resolve().unwrap_err().to_string();
    assert!(err.contains("also an upstream stream"), "{err}");
    assert!(Config::default().ingest_stream.is_empty(), "off by default");
}

#[test]
fn namespaces_may_name_their_upstream() {
    let file: Settings = toml::from_str(
        "redis = \"redis://127.0.0.1:6379\"\n[[namespaces]]\npattern = \"orders:*\"\nupstream_stream = \"orders\"\nupstream_url = \"https://b/orders\"",
    )
    .unwrap();
    let config = file.clone().resolve().unwrap();
    assert_eq!(
        config.namespaces[0].upstream_url.as_deref(),
        Some("https://b/orders")
    );
    // A stream needs Redis; a URL alone does not.
    let memory = Settings {
        redis: None,
        ..file
    };
    let err = memory.clone().resolve().unwrap_err().to_string();
    assert!(
        err.contains("upstream_stream needs Redis") && err.contains("orders:*"),
        "{err}"
    );
    let mut url_only = memory;
    if let Some(namespaces) = url_only.namespaces.as_mut() {
        namespaces[0].upstream_stream = None;
    }
    assert!(url_only.resolve().is_ok());
    let bad: Settings =
        toml::from_str("[[namespaces]]\npattern = \"x\"\nupstream_url = \"redis://b\"").unwrap();
    let err = bad.resolve().unwrap_err().to_string();
    assert!(
        err.contains("namespaces") && err.contains("upstream_url"),
        "{err}"
    );
}

#[test]
fn allowed_hosts_are_names_not_urls() {
    let url = Settings {
        allowed_hosts: Some("chat.example, https://chat.example/".into()),
        ..Default::default()
    };
    let err = url.resolve().unwrap_err().to_string();
    assert!(
        err.contains("allowed_hosts") && err.contains("https://chat.example/"),
        "{err}"
    );
    let names = Settings {
        allowed_hosts: Some("chat.example, 10.0.0.5:1234, [::1]".into()),
        ..Default::default()
    };
    assert!(names.resolve().is_ok());
    let zero = Settings {
        request_timeout: Some(Duration::ZERO),
        ..Default::default()
    };
    assert!(zero
        .resolve()
        .unwrap_err()
        .to_string()
        .contains("request_timeout"));
}

#[test]
fn tls_needs_both_files() {
    let cert_only = Settings {
        tls_cert: Some("cert.pem".into()),
        ..Default::default()
    };
    let err = cert_only.resolve().unwrap_err().to_string();
    assert!(err.contains("tls_key") && err.contains("both"), "{err}");
    let key_only = Settings {
        tls_key: Some("key.pem".into()),
        ..Default::default()
    };
    let err = key_only.resolve().unwrap_err().to_string();
    assert!(err.contains("tls_cert"), "{err}");
    let both = Settings {
        tls_cert: Some("cert.pem".into()),
        tls_key: Some("key.pem".into()),
        ..Default::default()
    };
    assert!(both.resolve().unwrap().tls());
    assert!(!Config::default().tls());
}

#[test]
fn the_default_file_reads_back_as_the_defaults() {
    let text = Config::default_file();
    let settings: Settings = toml::from_str(&text).expect("valid TOML");
    let config = settings.resolve().expect("valid settings");
    assert_eq!(config.listen, Config::default().listen);
    assert_eq!(config.ping_interval, Duration::from_secs(25));
    assert_eq!(config.token_jwks_refresh, Duration::from_secs(300));
    assert!(text.contains("# env: DUPLEX_MAX_MESSAGE_SIZE\nmax_message_size = 65536"));
    assert!(text.contains("[[namespaces]]"));
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = Settings {
        api_key: Some("api-key-value".into()),
        token_secret: Some("token-secret-value".into()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("api-key-value"), "{shown}");
    assert!(!shown.contains("token-secret-value"), "{shown}");
    assert!(shown.contains("<redacted>"));
}
