//! `deploy/`: the systemd unit passes `systemd-analyze verify`, stays
//! hardened (`systemd-analyze security`), starts the binary with a command
//! line it accepts and gives shutdown time to finish; the Prometheus alert
//! rules pass `promtool check rules` and their unit tests (`promtool test
//! rules deploy/alerts.test.yml`), and name only metrics a node serves.
//! `scripts/test.sh` installs systemd and prometheus (promtool) when missing;
//! there (EXAMPLE_REQUIRE_ALL) a missing tool fails instead of skipping.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::examples::has_library;
use support::node::TestNode;

const INSTALLED_BINARY: &str = "/usr/local/bin/duplex";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn explain(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The unit as installed, except that it runs the binary under test
/// (`verify` needs the command to exist), in a directory of its own.
fn unit_for_this_build() -> PathBuf {
    let unit = read("duplex.service");
    assert!(unit.contains(&format!("ExecStart={INSTALLED_BINARY} ")));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-unit");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("duplex.service");
    std::fs::write(
        &path,
        unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_duplex")),
    )
    .expect("write the unit");
    path
}

/// The value of `Key=` in the unit (the last one, as systemd reads it).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in deploy/duplex.service"))
}

#[tokio::test]
async fn the_systemd_unit_verifies_and_is_hardened() {
    if !has_library("systemd-analyze", &["--version"]).await {
        return;
    }
    let unit = unit_for_this_build();
    let unit = unit.to_string_lossy();
    let verify = run("systemd-analyze", &["verify", &unit]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        explain(&verify)
    );
    // Exposure levels run 0 (locked down) to 10; under 2 is "OK".
    let security = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            &unit,
        ],
    );
    assert!(
        security.status.success(),
        "systemd-analyze security: {}",
        explain(&security)
    );
}

#[tokio::test]
async fn the_units_command_line_is_one_the_binary_accepts() {
    let unit = read("duplex.service");
    let exec = unit_value(&unit, "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(INSTALLED_BINARY));
    let args: Vec<&str> = words.collect();
    assert_eq!(args[..2], ["serve", "--config"], "{exec}");

    // The config file the README says to make, checked as the unit would run it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-config");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("duplex.toml");
    let genconfig = run(env!("CARGO_BIN_EXE_duplex"), &["genconfig"]);
    assert!(genconfig.status.success(), "{}", explain(&genconfig));
    std::fs::write(&config, &genconfig.stdout).expect("write the config");
    let config = config.to_string_lossy();
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "/etc/duplex/duplex.toml" {
                &config
            } else {
                *a
            }
        })
        .chain(["--check-config"])
        .collect();
    let check = run(env!("CARGO_BIN_EXE_duplex"), &args);
    assert!(
        check.status.success(),
        "duplex {args:?}: {}",
        explain(&check)
    );

    // systemd must not kill the node while it flushes (shutdown_timeout).
    let stop = humantime::parse_duration(unit_value(&unit, "TimeoutStopSec")).expect("a duration");
    let flush = duplex::config::Config::default().shutdown_timeout;
    assert!(
        stop > flush * 2,
        "TimeoutStopSec {stop:?}, shutdown_timeout {flush:?}"
    );
    assert_eq!(unit_value(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
}

#[tokio::test]
async fn alert_rules_check_and_pass_their_unit_tests() {
    if !has_library("promtool", &["--version"]).await {
        return;
    }
    let rules = deploy("alerts.yml");
    let check = run("promtool", &["check", "rules", &rules.to_string_lossy()]);
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        explain(&check)
    );
    let tests = deploy("alerts.test.yml");
    let test = run("promtool", &["test", "rules", &tests.to_string_lossy()]);
    assert!(
        test.status.success(),
        "promtool test rules: {}",
        explain(&test)
    );
}

/// A renamed metric would leave an alert that never fires: every
/// `duplex_*` name in the rules and their tests is one `/metrics` serves.
#[tokio::test]
async fn alert_rules_name_only_metrics_a_node_serves() {
    let node = TestNode::memory().await;
    let exposition = reqwest::get(node.http("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    let served: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| l.starts_with("duplex_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in ["alerts.yml", "alerts.test.yml"] {
        let text = read(file);
        let named: BTreeSet<&str> = text
            .match_indices("duplex_")
            .map(|(start, _)| {
                let rest = &text[start..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(named.len() > 5, "{file}: {named:?}");
        let unknown: Vec<_> = named.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no node serves: {unknown:?}\nserved: {served:?}"
        );
    }
}
