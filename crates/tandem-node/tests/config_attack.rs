//! The node config file is input from outside: an operator's editor, a typo, a
//! file half-written by a script. These properties take the complete config of
//! docs/OPERATIONS.md's reference and break it the ways such hands do (a key
//! removed, a value of another type, a huge or negative number, control
//! characters, an unknown key in any table, a table made a value), then read
//! it with both readers (the agent's `NodeConfig` and the tools' replication
//! `Settings`):
//!
//! - neither panics;
//! - a refusal names the file, then the field (`node config <file>: <field>: ...`);
//! - what the agent accepts, written back with `to_toml` (as `set-deployment`
//!   does), reads back to the same config, and the tools accept it too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::prelude::*;
use tandem_node::{LoadSettings, NodeConfig};
use tandem_replication::Settings;

const FILE: &str = "/etc/tandem/node.toml";

/// The config reference: the ```toml block after the marker in OPERATIONS.md.
fn reference() -> toml::Table {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/OPERATIONS.md"),
    )
    .expect("docs/OPERATIONS.md");
    let (_, after) = doc
        .split_once("<!-- config-reference -->")
        .expect("the config reference marker");
    let (_, block) = after.split_once("```toml\n").expect("a toml block");
    let (block, _) = block.split_once("\n```").expect("the block's end");
    toml::from_str(block).expect("the reference parses as TOML")
}

/// Every key of the document as a path of table keys and array indexes.
fn paths(value: &toml::Value, at: Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let mut p = at.clone();
                p.push(Step::Key(k.clone()));
                out.push(p.clone());
                paths(v, p, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let mut p = at.clone();
                p.push(Step::Index(i));
                out.push(p.clone());
                paths(v, p, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// How one value is broken.
#[derive(Debug, Clone)]
enum Harm {
    Remove,
    Replace(toml::Value),
    AddUnknown(String),
}

fn hostile_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        Just(toml::Value::Integer(i64::MAX)),
        Just(toml::Value::Integer(-1)),
        Just(toml::Value::Integer(0)),
        Just(toml::Value::Integer(65_536)),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        ".{0,40}".prop_map(toml::Value::String),
        "[\\x00-\\x1f/.: ]{0,12}".prop_map(toml::Value::String),
        Just(toml::Value::String("x".repeat(100_000))),
        Just(toml::Value::String("192.0.2.300/33".into())),
        Just(toml::Value::String("../../etc/shadow".into())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

fn harm() -> impl Strategy<Value = Harm> {
    prop_oneof![
        1 => Just(Harm::Remove),
        3 => hostile_value().prop_map(Harm::Replace),
        1 => "[a-z_]{1,12}".prop_map(Harm::AddUnknown),
    ]
}

/// The reference with `harms` applied at paths picked by `picks`.
fn broken(harms: &[(prop::sample::Index, Harm)]) -> String {
    let mut doc = toml::Value::Table(reference());
    for (pick, harm) in harms {
        let mut all = Vec::new();
        paths(&doc, Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let path = all[pick.index(all.len())].clone();
        apply(&mut doc, &path, harm);
    }
    toml::to_string(&doc).unwrap_or_default()
}

fn apply(doc: &mut toml::Value, path: &[Step], harm: &Harm) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = doc;
    for step in parents {
        at = match (step, at) {
            (Step::Key(k), toml::Value::Table(t)) => t.get_mut(k).unwrap(),
            (Step::Index(i), toml::Value::Array(a)) => &mut a[*i],
            _ => return,
        };
    }
    match (last, at, harm) {
        (Step::Key(k), toml::Value::Table(t), Harm::Remove) => {
            t.remove(k);
        }
        (Step::Index(i), toml::Value::Array(a), Harm::Remove) => {
            a.remove(*i);
        }
        (Step::Key(k), toml::Value::Table(t), Harm::Replace(v)) => {
            t.insert(k.clone(), v.clone());
        }
        (Step::Index(i), toml::Value::Array(a), Harm::Replace(v)) => a[*i] = v.clone(),
        (Step::Key(_), toml::Value::Table(t), Harm::AddUnknown(name)) => {
            t.insert(format!("zz_{name}"), toml::Value::Integer(1));
        }
        _ => {}
    }
}

/// A refusal names the file, then a field or the TOML position.
fn assert_names_file_and_field(err: &str) {
    let prefix = format!("node config {FILE}: ");
    assert!(
        err.starts_with(&prefix),
        "the file is not named first: {err}"
    );
    let rest = &err[prefix.len()..];
    assert!(
        rest.split_once(": ")
            .is_some_and(|(field, problem)| !field.is_empty() && !problem.is_empty()),
        "no `<field>: <problem>` after the file: {err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_broken_config_is_refused_by_name_or_read_back_the_same(
        harms in proptest::collection::vec((any::<prop::sample::Index>(), harm()), 1..4),
    ) {
        let text = broken(&harms);
        let agent = NodeConfig::parse(&text, Path::new(FILE));
        match &agent {
            Ok(config) => {
                let again = NodeConfig::parse(&config.to_toml(), Path::new(FILE))
                    .map_err(|e| format!("{e}\n--- written ---\n{}", config.to_toml()));
                prop_assert_eq!(again.as_ref(), Ok(config));
            }
            Err(e) => assert_names_file_and_field(&e.to_string()),
        }
        let tools = Settings::parse(&text, Path::new(FILE), "/var/lib/tandem");
        if let Err(e) = &tools {
            assert_names_file_and_field(&e.to_string());
        }
        // What the agent runs with, the tools read too (`mp_replication` beside it).
        if agent.is_ok() {
            prop_assert!(tools.is_ok(), "the agent reads it, the tools refuse it: {:?}", tools.err());
        }
    }

    #[test]
    fn any_text_is_read_or_refused_without_panic(text in "[\\PC\\n\\[\\]=\"]{0,300}") {
        let _ = NodeConfig::parse(&text, Path::new(FILE));
        let _ = Settings::parse(&text, Path::new(FILE), "/var/lib/tandem");
    }
}

#[test]
fn the_reference_itself_is_read() {
    let text = toml::to_string(&reference()).unwrap();
    NodeConfig::parse(&text, Path::new(FILE)).expect("the reference is a valid config");
}

/// A site replication cannot carry is refused by the agent as by the tools (the
/// agent used to read it and run with an unknown site).
#[test]
fn a_site_above_65535_is_refused_by_both_readers() {
    let mut doc = reference();
    let node = doc.get_mut("node").and_then(|n| n.as_table_mut()).unwrap();
    node.insert("site".into(), toml::Value::Integer(65_536));
    let text = toml::to_string(&doc).unwrap();
    let agent = NodeConfig::parse(&text, Path::new(FILE))
        .unwrap_err()
        .to_string();
    assert!(agent.contains("node.site: 65536 is above 65535"), "{agent}");
    let tools = Settings::parse(&text, Path::new(FILE), "/var/lib/tandem").unwrap_err();
    assert_names_file_and_field(&tools.to_string());
}
