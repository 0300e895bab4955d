//! `docs/OPERATIONS.md` against the code, so the operator's guide cannot drift:
//!
//! - its config reference (the ```toml block after `<!-- config-reference -->`)
//!   parses with tandem's own parsers (`NodeConfig`, `BundleSpec`, replication's
//!   `Settings`), whose `deny_unknown_fields` refuse a key the code does not know;
//! - it names every key those parsers know: each table of the block gets an
//!   unknown key, and the parser's refusal lists the fields it expects (serde's
//!   "expected one of ..."), so a field added to the code fails here until the
//!   block shows it;
//! - the values it shows as defaults are the defaults the parsers apply;
//! - every `failover`, `mp_replication` and `cargo xtask` command it names (with
//!   the `--flags` given to the first two) exists in the tools' sources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tandem_bundle::BundleSpec;
use tandem_node::{LoadSettings, NodeConfig, load_bundle_spec};
use tandem_replication::Settings;

const MARKER: &str = "<!-- config-reference -->";
const UNKNOWN: &str = "zz_undocumented";
const STATE_DIR: &str = "/var/lib/tandem";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn doc() -> String {
    read("docs/OPERATIONS.md")
}

/// The config reference: the ```toml block right after the marker.
fn reference() -> String {
    let doc = doc();
    let at = doc
        .find(MARKER)
        .unwrap_or_else(|| panic!("docs/OPERATIONS.md has no {MARKER}"));
    let rest = doc[at + MARKER.len()..].trim_start();
    let body = rest
        .strip_prefix("```toml\n")
        .unwrap_or_else(|| panic!("{MARKER} must be followed by a ```toml block"));
    let end = body.find("\n```").expect("the ```toml block ends");
    body[..=end].to_string()
}

/// A parser of the whole config text, for its error message.
type Parser = fn(&str) -> Result<(), String>;

fn parse_node(text: &str) -> Result<NodeConfig, String> {
    NodeConfig::parse(text, Path::new("OPERATIONS.md")).map_err(|e| e.to_string())
}

fn parse_bundle(text: &str) -> Result<BundleSpec, String> {
    BundleSpec::from_node_config(text).map_err(|e| e.to_string())
}

fn parse_replication(text: &str) -> Result<Settings, String> {
    Settings::parse(text, Path::new("OPERATIONS.md"), STATE_DIR)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

#[test]
fn the_config_reference_parses_with_the_tools_own_loaders() {
    let text = reference();
    let config = parse_node(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services.len(), 2);
    // Through the files the tools read, as they read them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(NodeConfig::load(&path).unwrap(), config);
    let spec = load_bundle_spec(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.roots.len(), 3);
    let settings = Settings::load(&path, true, STATE_DIR)
        .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
    assert_eq!(settings.replication.tables.len(), 3);
    // The replication facts the agent builds from the same file agree.
    let from_node = tandem_node::replication_settings(&config, Path::new(STATE_DIR)).unwrap();
    assert_eq!(from_node.replication, settings.replication);
    assert_eq!(from_node.node, settings.node);
}

/// The fields a parser expects in the table at `path` of the reference, from its
/// refusal of an unknown key there.
fn expected_fields(text: &str, path: &[&str], parse: Parser) -> BTreeSet<String> {
    let mut doc: toml::Table = toml::from_str(text).unwrap();
    let mut table = &mut doc;
    for key in path {
        table = match table.get_mut(*key).unwrap_or_else(|| panic!("no {path:?}")) {
            toml::Value::Table(t) => t,
            toml::Value::Array(a) => a[0].as_table_mut().unwrap(),
            other => panic!("{path:?} is {other:?}"),
        };
    }
    table.insert(UNKNOWN.into(), toml::Value::Integer(1));
    let err = parse(&toml::to_string(&doc).unwrap())
        .expect_err("an unknown key is refused (deny_unknown_fields)");
    let line = err
        .lines()
        .find(|l| l.contains(&format!("unknown field `{UNKNOWN}`")))
        .unwrap_or_else(|| panic!("{path:?}: no unknown-field message in {err}"));
    let (_, list) = line
        .split_once("expected")
        .unwrap_or_else(|| panic!("{path:?}: the message lists no expected fields: {line}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys the reference has at `path`; for an array of tables, in any element.
fn documented_keys(text: &str, path: &[&str]) -> BTreeSet<String> {
    let doc: toml::Table = toml::from_str(text).unwrap();
    let mut tables = vec![&doc];
    for key in path {
        tables = tables
            .into_iter()
            .flat_map(|t| match t.get(*key) {
                Some(toml::Value::Table(t)) => vec![t],
                Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_table()).collect(),
                _ => vec![],
            })
            .collect();
    }
    tables.iter().flat_map(|t| t.keys().cloned()).collect()
}

#[test]
fn the_config_reference_names_every_key_the_parsers_know() {
    let text = reference();
    let node = |t: &str| parse_node(t).map(drop);
    let bundle = |t: &str| parse_bundle(t).map(drop);
    let replication = |t: &str| parse_replication(t).map(drop);
    let tables: [(&[&str], Parser); 13] = [
        (&[], node),
        (&["node"], node),
        (&["network"], node),
        (&["probe"], node),
        (&["failover"], node),
        (&["service"], node),
        (&["hooks"], node),
        (&["peer"], node),
        (&["bundle"], bundle),
        (&["bundle", "roots"], bundle),
        (&["bundle", "limits"], bundle),
        (&["replication"], replication),
        (&["replication", "postgres"], replication),
    ];
    let mut missing = Vec::new();
    for (path, parse) in tables {
        let expected = expected_fields(&text, path, parse);
        assert!(
            expected.len() >= 2,
            "{path:?}: could not read the expected fields: {expected:?}"
        );
        let documented = documented_keys(&text, path);
        for field in expected.difference(&documented) {
            missing.push(format!("[{}] {field}", path.join(".")));
        }
    }
    // The extraction works: known fields are among those read.
    let failover = expected_fields(&text, &["failover"], node);
    assert!(failover.contains("heartbeat_ms"), "{failover:?}");
    assert!(
        missing.is_empty(),
        "docs/OPERATIONS.md's config reference lacks keys the code knows: {missing:?}"
    );
}

/// What the parsers make of a config with the required keys only (and empty
/// optional tables): the defaults an operator gets.
const MINIMAL: &str = r#"
[node]
id = 1
hostname = "meetings1.example.com"

[network]
shared_address = "192.0.2.10/24"
node_address = "192.0.2.11/24"
gateway = "192.0.2.1"
peer_address = "192.0.2.12"

[[service]]
name = "meetingplace"
start = "systemctl start meetingplace"
stop = "systemctl stop meetingplace"

[hooks]

[peer]

[replication]

[replication.postgres]

[bundle]

[[bundle.roots]]
name = "enrollment"
path = "/usr/local/enrollment"

[bundle.limits]
"#;

#[test]
fn the_values_shown_as_defaults_are_the_defaults() {
    let text = reference();
    let ex = parse_node(&text).unwrap();
    let min = parse_node(MINIMAL).unwrap();
    assert_eq!(ex.node.site, min.node.site, "[node] site");
    assert_eq!(ex.network.interface, min.network.interface);
    assert_eq!(
        ex.network.node_label.clone().unwrap(),
        min.network.node_label(),
        "[network] node_label"
    );
    assert_eq!(
        ex.network.reference.unwrap(),
        min.network.reference(),
        "[network] reference"
    );
    assert_eq!(ex.probe, min.probe, "[probe]");
    let mut failover = ex.failover.clone();
    failover.database_size_alarm_mb = None;
    assert_eq!(failover, min.failover, "[failover]");
    for service in &ex.services {
        assert_eq!(
            service.timeout_ms, min.services[0].timeout_ms,
            "[[service]] timeout_ms"
        );
    }
    let active = ex
        .services
        .iter()
        .find(|s| s.name == "meetingplace")
        .unwrap();
    assert_eq!(active.run_on, min.services[0].run_on, "[[service]] run_on");
    assert_eq!(
        ex.hooks.timeout_ms, min.hooks.timeout_ms,
        "[hooks] timeout_ms"
    );
    let peer = ex.peer.clone().unwrap();
    assert_eq!(
        peer,
        tandem_peer::PeerSection {
            key_file: Some(tandem_replication::DEFAULT_KEY_FILE.into()),
            ..tandem_peer::PeerSection::default()
        },
        "[peer]"
    );

    let ex_rep = parse_replication(&text).unwrap();
    let min_rep = parse_replication(MINIMAL).unwrap();
    assert_eq!(ex_rep.database_path(), min_rep.database_path(), "database");
    assert_eq!(ex_rep.key_file(), min_rep.key_file(), "key_file");
    assert_eq!(ex_rep.port(), min_rep.port(), "[replication] port");
    let (ex_pg, min_pg) = (&ex_rep.replication.postgres, &min_rep.replication.postgres);
    assert_eq!(ex_pg.config_file(), min_pg.config_file(), "config_file");
    assert_eq!(ex_pg.hba_file(), min_pg.hba_file(), "hba_file");
    let mut r = ex_rep.replication.clone();
    r.database = None;
    r.port = None;
    r.key_file = None;
    r.postgres.bindir = None;
    r.postgres.config_file = None;
    r.postgres.hba_file = None;
    assert_eq!(
        r, min_rep.replication,
        "[replication] and [replication.postgres]"
    );

    let ex_b = parse_bundle(&text).unwrap();
    let min_b = parse_bundle(MINIMAL).unwrap();
    assert_eq!(ex_b.limits, min_b.limits, "[bundle.limits]");
    assert_eq!(ex_b.allow_setid, min_b.allow_setid);
    assert_eq!(ex_b.compression_level, min_b.compression_level);
    assert_eq!(ex_b.roots[0].include, min_b.roots[0].include, "include");
    assert_eq!(ex_b.roots[0].exclude, min_b.roots[0].exclude, "exclude");
}

/// Commands and flags a tool's sources define.
struct Tool {
    commands: BTreeSet<String>,
    /// Commands marked `hide = true` (not for operators).
    hidden: BTreeSet<String>,
    /// The sources, for the flags.
    sources: String,
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The subcommands of `enum NAME { ... }` in `file`: variant names in kebab case,
/// and the `name = ".."` and aliases of their `#[command(...)]`.
fn tool(file: &str, enum_name: &str, source_dir: &str) -> Tool {
    let text = read(file);
    let start = text
        .find(&format!("enum {enum_name} {{"))
        .unwrap_or_else(|| panic!("no enum {enum_name} in {file}"));
    let body = &text[start..];
    let mut depth = 0;
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            _ => {}
        }
    }
    let mut commands = BTreeSet::new();
    let mut hidden = BTreeSet::new();
    let mut hide_next = false;
    for line in body[..end].lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent == 4 && trimmed.starts_with(|c: char| c.is_ascii_uppercase()) {
            let name: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if std::mem::take(&mut hide_next) {
                hidden.insert(kebab(&name));
            }
            commands.insert(kebab(&name));
        }
        if trimmed.starts_with("#[command(") {
            hide_next |= trimmed.contains("hide = true");
            for key in ["name = \"", "alias = \""] {
                for piece in trimmed.split(key).skip(1) {
                    commands.insert(piece.split('"').next().unwrap().to_owned());
                }
            }
        }
    }
    let mut sources = String::new();
    for entry in std::fs::read_dir(root().join(source_dir)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    Tool {
        commands,
        hidden,
        sources,
    }
}

impl Tool {
    fn has_flag(&self, flag: &str) -> bool {
        let field = flag.replace('-', "_");
        ["help", "version"].contains(&flag)
            || self.sources.contains(&format!("long = \"{flag}\""))
            || self.sources.contains(&format!(" {field}: "))
    }
}

/// The code in the doc: fenced blocks (continuation lines joined) and inline spans.
fn code_spans(doc: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut prose = String::new();
    let mut fence: Option<String> = None;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            match fence.take() {
                Some(block) => spans.extend(
                    block
                        .replace("\\\n", " ")
                        .lines()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                ),
                None => fence = Some(String::new()),
            }
            continue;
        }
        match &mut fence {
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    spans.extend(prose.split('`').skip(1).step_by(2).map(str::to_owned));
    spans
}

/// The words that follow `program` (at a word start) in `span`, up to a comment.
fn invocations<'a>(span: &'a str, program: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = span[from..].find(program) {
        let start = from + at;
        from = start + program.len();
        let before = span[..start].chars().last();
        let after = span[from..].chars().next();
        let word_start = before.is_none_or(|c| c.is_whitespace() || "`($".contains(c));
        let word_end = after.is_none_or(char::is_whitespace);
        if word_start && word_end {
            // Up to a comment, a pipe, or the end of a `quoted` command in a
            // comment of a fenced block.
            let mut words = Vec::new();
            for word in span[from..].split_whitespace() {
                if word.starts_with('#') || ["|", ";", "&&"].contains(&word) {
                    break;
                }
                let (word, quoted_end) = match word.split_once('`') {
                    Some((w, _)) => (w, true),
                    None => (word, false),
                };
                let word = word.trim_end_matches(['.', ',', ':', ')']);
                if !word.is_empty() {
                    words.push(word);
                }
                if quoted_end {
                    break;
                }
            }
            found.push(words);
        }
    }
    found
}

/// Commands the guide describes ahead of their landing on main (being written
/// by others while the guide was). Each must not exist yet: once it does, this
/// test fails until it is removed here, and its flags are checked from then on.
/// One that lands under another name fails the "not in the guide" check below.
const PENDING: &[&str] = &[];

#[test]
fn every_command_the_guide_names_exists() {
    let doc = doc();
    let failover = tool(
        "examples/failover/src/main.rs",
        "Command",
        "examples/failover/src",
    );
    let mp = tool(
        "examples/mp_replication/src/main.rs",
        "Command",
        "examples/mp_replication/src",
    );
    let xtask = tool("xtask/src/main.rs", "Command", "xtask/src");
    let lab = tool("xtask/src/lab.rs", "LabCommand", "xtask/src");
    for (t, some) in [
        (&failover, "set-deployment"),
        (&failover, "copyConfigFiles"),
        (&mp, "switch-on"),
        (&mp, "switchON"),
        (&xtask, "lab"),
        (&lab, "cut"),
    ] {
        assert!(t.commands.contains(some), "{some}: {:?}", t.commands);
    }
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for span in code_spans(&doc) {
        for (program, t) in [("failover", &failover), ("mp_replication", &mp)] {
            for words in invocations(&span, program) {
                let Some(command) = words.first() else {
                    continue;
                };
                if command.starts_with('-') || !command.starts_with(char::is_alphabetic) {
                    continue;
                }
                seen.insert(format!("{program} {command}"));
                let pending = PENDING.contains(&format!("{program} {command}").as_str());
                if pending {
                    if t.commands.contains(*command) {
                        problems.push(format!(
                            "`{program} {command}` exists now: remove it from PENDING"
                        ));
                    }
                    continue;
                }
                if !t.commands.contains(*command) {
                    problems.push(format!("`{program} {command}`: no such command"));
                }
                for flag in words.iter().filter_map(|w| w.strip_prefix("--")) {
                    let flag = flag.split('=').next().unwrap();
                    if !t.has_flag(flag) {
                        problems.push(format!("`{program} {command} --{flag}`: no such flag"));
                    }
                }
            }
        }
        for words in invocations(&span, "cargo xtask") {
            let Some(command) = words.first() else {
                continue;
            };
            seen.insert(format!("cargo xtask {command}"));
            if !xtask.commands.contains(*command) {
                problems.push(format!("`cargo xtask {command}`: no such command"));
            }
            if *command == "lab"
                && let Some(sub) = words.get(1)
                && !lab.commands.contains(*sub)
            {
                problems.push(format!("`cargo xtask lab {sub}`: no such command"));
            }
        }
    }
    assert!(problems.is_empty(), "docs/OPERATIONS.md: {problems:#?}");
    // The guide covers every operator command of both tools.
    for (program, t) in [("failover", &failover), ("mp_replication", &mp)] {
        for command in &t.commands {
            let kebab_only = !command.chars().any(|c| c.is_ascii_uppercase());
            if kebab_only
                && !t.hidden.contains(command)
                && !seen.contains(&format!("{program} {command}"))
            {
                problems.push(format!("`{program} {command}` is not in the guide"));
            }
        }
    }
    assert!(problems.is_empty(), "docs/OPERATIONS.md: {problems:#?}");
}

#[test]
fn the_readme_links_the_guide() {
    assert!(read("README.md").contains("docs/OPERATIONS.md"));
}
