//! The docs name only what exists: every `duplex <command> --flag` and
//! every `DUPLEX_*` variable shown in README.md, RELIABILITY.md, docs/*.md,
//! the clients' READMEs and examples/ is one the built binary's `--help`
//! lists, and PROTOCOL.md's method list is exactly the methods the
//! protocol crate decodes.
//!
//! What is checked in a file:
//! - a command line (a code block line, an inline code span, a line of an
//!   example) that runs `duplex` (`duplex`, `path/to/duplex`,
//!   `cargo run [--release] --`): its command and each `--flag` after it;
//! - an inline code span that starts with a flag (`` `--listen` ``, the
//!   README's settings table): a flag of some `duplex` command;
//! - every `DUPLEX_NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use duplex_protocol::code::ErrorCode;
use duplex_protocol::command::{decode, METHODS};

/// `DUPLEX_*` variables that belong to something else than the binary.
const OTHER_VARIABLES: &[(&str, &str)] = &[
    ("DUPLEX_NODE", "the examples' node URL"),
    ("DUPLEX_BIN", "the binary clients/js/test.sh runs"),
];

/// Flags shown in the docs alone in a code span that are another
/// program's.
const OTHER_FLAGS: &[(&str, &str)] = &[
    ("--save", "redis-server, RELIABILITY.md"),
    ("--appendonly", "redis-server, RELIABILITY.md"),
];

/// What the binary says it takes: each command's flags, and every
/// environment variable any of them reads.
struct Cli {
    flags: BTreeMap<String, BTreeSet<String>>,
    variables: BTreeSet<String>,
}

impl Cli {
    fn from_help() -> Cli {
        let top = help(&["--help"]);
        let commands: Vec<String> = top
            .split("Commands:")
            .nth(1)
            .expect("duplex --help lists its commands")
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            // `  serve   Run a node...`; deeper lines continue a description.
            .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' ')))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect();
        assert!(commands.contains(&"serve".to_string()), "{commands:?}");
        let mut flags = BTreeMap::new();
        let mut variables = BTreeSet::new();
        flags.insert(String::new(), flags_in(&top));
        for command in commands {
            let text = help(&[&command, "--help"]);
            for (at, _) in text.match_indices("[env: ") {
                let name: String = text[at + 6..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                variables.insert(name);
            }
            flags.insert(command, flags_in(&text));
        }
        Cli { flags, variables }
    }

    fn any_flag(&self, flag: &str) -> bool {
        self.flags.values().any(|f| f.contains(flag))
    }
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_duplex"))
        .args(args)
        .output()
        .expect("run duplex");
    assert!(out.status.success(), "duplex {args:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The flags of the option lines (`  -h, --help`, `      --listen <LISTEN>`),
/// not the ones descriptions mention.
fn flags_in(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|l| {
            let indent = l.len() - l.trim_start().len();
            indent <= 6 && l.trim_start().starts_with('-')
        })
        .flat_map(|l| {
            l.split_whitespace()
                .take_while(|w| w.starts_with('-'))
                .filter_map(flag_of)
        })
        .collect()
}

/// The files users read: the docs, the clients' READMEs, the examples.
fn documented_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("RELIABILITY.md")];
    let mut dirs = vec![root.join("docs"), root.join("examples")];
    for client in std::fs::read_dir(root.join("clients")).expect("clients/") {
        let readme = client.expect("entry").path().join("README.md");
        if readme.exists() {
            files.push(readme);
        }
    }
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a docs directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("md" | "sh" | "py" | "php" | "mjs" | "js" | "html")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Command lines and flag-only code spans of one file.
struct Snippets {
    commands: Vec<String>,
    flag_spans: Vec<String>,
}

fn snippets(path: &Path, text: &str) -> Snippets {
    let mut out = Snippets {
        commands: Vec::new(),
        flag_spans: Vec::new(),
    };
    if path.extension().and_then(|e| e.to_str()) != Some("md") {
        // An example: any line may be a command, or a comment showing one.
        for line in text.lines() {
            let line = line.trim_start().trim_start_matches(['#', '/', '*', ' ']);
            out.commands.push(line.to_string());
        }
        return out;
    }
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            out.commands.push(line.to_string());
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            if span.starts_with("--") {
                out.flag_spans.push(span.to_string());
            } else {
                out.commands.push(span.to_string());
            }
        }
    }
    out
}

/// The arguments after `duplex` when `line` runs it.
fn duplex_args(line: &str) -> Vec<Vec<String>> {
    let mut runs = Vec::new();
    for command in shell_commands(line) {
        // A comment ends the command; `'#user:42'` does not start one.
        let command = command.split(" #").next().unwrap_or("");
        let words: Vec<&str> = command
            .split_whitespace()
            .skip_while(|w| *w == "$" || is_assignment(w))
            .collect();
        let rest = match words.first() {
            Some(w) if *w == "duplex" || w.ends_with("/duplex") => &words[1..],
            Some(&"cargo") if words.get(1) == Some(&"run") => {
                match words.iter().position(|w| *w == "--") {
                    Some(at) => &words[at + 1..],
                    None => continue,
                }
            }
            _ => continue,
        };
        runs.push(rest.iter().map(|w| w.to_string()).collect());
    }
    runs
}

/// `line` cut at `|`, `;` and `&&`, except inside `[...]`: a usage line's
/// `[--server URL | --redis URL]` is one command.
fn shell_commands(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '|' | ';' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            '&' if depth == 0 && chars.peek() == Some(&'&') => {
                chars.next();
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    })
}

/// `--flag` as written in a doc, without `[`, `=value`, `]`, `,`, `.`.
fn flag_of(word: &str) -> Option<String> {
    let word = word.trim_start_matches('[');
    let name: String = word
        .strip_prefix("--")?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = name.trim_end_matches('-');
    (!name.is_empty()).then(|| format!("--{name}"))
}

fn variables_in(text: &str) -> BTreeSet<String> {
    text.match_indices("DUPLEX_")
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .filter_map(|(at, _)| {
            let rest: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let rest = rest.trim_end_matches('_');
            (!rest.is_empty()).then(|| format!("DUPLEX_{rest}"))
        })
        .collect()
}

/// Every problem in one file's text.
fn check_file(cli: &Cli, path: &Path, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let name = path.display();
    let pieces = snippets(path, text);
    for line in &pieces.commands {
        for args in duplex_args(line) {
            let (command, flags) = match args.first() {
                Some(first) if !first.starts_with('-') && !first.starts_with('[') => {
                    (first.as_str(), &args[1..])
                }
                _ => ("", &args[..]),
            };
            let Some(known) = cli.flags.get(command) else {
                problems.push(format!(
                    "{name}: `duplex {command}` is not a command ({line:?})"
                ));
                continue;
            };
            for flag in flags.iter().filter_map(|w| flag_of(w)) {
                if !known.contains(&flag) {
                    problems.push(format!(
                        "{name}: `duplex {command}` has no {flag} ({line:?})"
                    ));
                }
            }
        }
    }
    for span in &pieces.flag_spans {
        let Some(flag) = span.split_whitespace().next().and_then(flag_of) else {
            continue;
        };
        if !cli.any_flag(&flag) && !OTHER_FLAGS.iter().any(|(f, _)| *f == flag) {
            problems.push(format!("{name}: no duplex command has {flag} (`{span}`)"));
        }
    }
    for variable in variables_in(text) {
        if !cli.variables.contains(&variable)
            && !OTHER_VARIABLES.iter().any(|(v, _)| *v == variable)
        {
            problems.push(format!("{name}: no duplex command reads {variable}"));
        }
    }
    problems
}

#[test]
fn documented_commands_flags_and_variables_exist() {
    let cli = Cli::from_help();
    assert!(
        cli.variables.contains("DUPLEX_LISTEN"),
        "{:?}",
        cli.variables
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = documented_files(&root);
    assert!(files.len() > 15, "{files:?}");
    let mut problems = Vec::new();
    let mut runs = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read a doc");
        runs += snippets(path, &text)
            .commands
            .iter()
            .map(|l| duplex_args(l).len())
            .sum::<usize>();
        let shown = path.strip_prefix(&root).unwrap_or(path);
        problems.extend(check_file(&cli, shown, &text));
    }
    assert!(runs > 10, "found only {runs} duplex command lines");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The methods between `start` and the end of its list item (or sentence).
fn methods_listed(text: &str, start: &str, end: &str) -> BTreeSet<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} in the doc"));
    let rest = &text[from + start.len()..];
    let list = &rest[..rest.find(end).unwrap_or(rest.len())];
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn the_documented_methods_are_the_decoded_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let protocol = std::fs::read_to_string(root.join("docs/PROTOCOL.md")).expect("PROTOCOL.md");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let decoded: BTreeSet<String> = METHODS.iter().map(|m| m.to_string()).collect();
    for (doc, listed) in [
        (
            "PROTOCOL.md 3.1",
            methods_listed(&protocol, "- `method` (required):", "\n- "),
        ),
        ("README.md", methods_listed(&readme, "Commands (", ")")),
    ] {
        for method in &listed {
            let frame = format!(r#"{{"id":1,"method":"{method}"}}"#);
            let unknown = decode(frame.as_bytes())
                .err()
                .is_some_and(|e| e.code == ErrorCode::UnknownMethod);
            assert!(
                !unknown,
                "{doc} lists {method:?}, which the protocol does not know"
            );
        }
        let missing: Vec<_> = decoded.difference(&listed).collect();
        assert!(missing.is_empty(), "{doc} leaves out {missing:?}");
    }
}
