//! The bundle spec: the `[bundle]` table of the node config, as this crate's own
//! serde type with its checks ([`BundleSpec::validate`]). `tandem-node` reads the
//! file and composes this table into its node config.

use std::path::PathBuf;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a node bundles and what it accepts: the `[bundle]` table of the node config.
///
/// [`BundleSpec::EXAMPLE`] shows every key with the seed's three directories.
/// Restore maps a bundle's roots to this node's roots by name; `node` globs,
/// `limits`, `allow_setid`, `allow_world_writable`, `owners` and `groups` are the
/// receiving node's policy (see `docs/SECURITY.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSpec {
    /// The directories whose files are bundled, each under a name.
    #[serde(default)]
    pub roots: Vec<RootSpec>,
    /// Globs of config class `node` (server-specific) over `<root name>/<path>`:
    /// never bundled, and refused on restore.
    #[serde(default)]
    pub node: Vec<String>,
    /// Limits a restore enforces while it reads a bundle.
    #[serde(default)]
    pub limits: Limits,
    /// Whether setuid and setgid bits may be bundled and restored.
    #[serde(default)]
    pub allow_setid: bool,
    /// Whether files and directories writable by every user (mode `o+w`) may be
    /// bundled and restored.
    #[serde(default)]
    pub allow_world_writable: bool,
    /// Local users (names, or numeric ids) a restore running as root may give
    /// restored files to; an entry whose owner resolves to anyone else is
    /// refused. `["root"]` when absent.
    #[serde(default = "default_owners")]
    pub owners: Vec<String>,
    /// Local groups (names, or numeric ids) a restore running as root may give
    /// restored files to, as [`BundleSpec::owners`]. `["root"]` when absent.
    #[serde(default = "default_owners")]
    pub groups: Vec<String>,
    /// gzip level 0-9 used when creating (6, as `gzip`, when absent).
    #[serde(default = "default_level")]
    pub compression_level: u32,
}

fn default_level() -> u32 {
    6
}

fn default_owners() -> Vec<String> {
    vec!["root".to_owned()]
}

impl Default for BundleSpec {
    fn default() -> Self {
        BundleSpec {
            roots: Vec::new(),
            node: Vec::new(),
            limits: Limits::default(),
            allow_setid: false,
            allow_world_writable: false,
            owners: default_owners(),
            groups: default_owners(),
            compression_level: default_level(),
        }
    }
}

/// One named directory of a [`BundleSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    /// The root's name: the first component of its entries in a bundle.
    /// ASCII letters, digits, `-` and `_`.
    pub name: String,
    /// Absolute path of the directory on this node.
    pub path: PathBuf,
    /// Globs (over the path inside the root, `/` not matched by `*`) of files to
    /// bundle; everything (`**`) when absent.
    #[serde(default = "include_all")]
    pub include: Vec<String>,
    /// Globs of files and directories never bundled (a matching directory is
    /// skipped whole).
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn include_all() -> Vec<String> {
    vec!["**".to_owned()]
}

impl RootSpec {
    /// A root that bundles everything under `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        RootSpec {
            name: name.into(),
            path: path.into(),
            include: include_all(),
            exclude: Vec::new(),
        }
    }
}

/// Limits enforced while a bundle is read, so a hostile or broken bundle stops
/// early instead of filling memory or disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most decompressed bytes (headers and contents).
    pub max_total_bytes: u64,
    /// Most entries (files, directories, links).
    pub max_entries: u64,
    /// Most decompressed bytes per compressed byte, checked once more than
    /// [`Limits::ratio_grace_bytes`] were decompressed.
    pub max_ratio: u64,
    /// Decompressed bytes read before the ratio is checked (small bundles of
    /// empty files compress very well).
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 8 << 30,
            max_entries: 200_000,
            max_ratio: 200,
            ratio_grace_bytes: 4 << 20,
        }
    }
}

/// The part of the node config this crate reads: the `[bundle]` table.
#[derive(Deserialize)]
struct NodeConfigView {
    #[serde(default)]
    bundle: BundleSpec,
}

impl BundleSpec {
    /// A `[bundle]` table with the seed's directories: the SSL enrollment
    /// directory, the web configuration, and the custom prompts.
    pub const EXAMPLE: &'static str = r#"[bundle]
allow_setid = false
allow_world_writable = false
# Who a restore (as root) may give files to; anything else is refused.
owners = ["root"]
groups = ["root"]
# Config class `node`: server-specific files, never bundled nor restored.
# Globs over `<root name>/<path inside the root>`.
node = ["web-conf/server.xml", "enrollment/**/*.host.key"]

[[bundle.roots]]
name = "enrollment"
path = "/usr/local/enrollment"

[[bundle.roots]]
name = "web-conf"
path = "/opt/cisco/meetingplace/web/current/etc/conf"
exclude = ["**/*.log", "tmp"]

[[bundle.roots]]
name = "prompts"
path = "/opt/cisco/meetingplace/prompts/custom"
include = ["**/*.wav"]

[bundle.limits]
max_total_bytes = 8589934592
max_entries = 200000
max_ratio = 200
"#;

    /// Reads the `[bundle]` table of a node config (TOML text) through the same type
    /// as `tandem-node`; other tables are ignored. A config without `[bundle]` gives
    /// an empty spec. Not validated (see [`BundleSpec::validate`]).
    pub fn from_node_config(text: &str) -> Result<Self, toml::de::Error> {
        let view: NodeConfigView = toml::from_str(text)?;
        Ok(view.bundle)
    }

    /// Checks names, paths and globs.
    pub fn validate(&self) -> Result<()> {
        self.compile().map(|_| ())
    }

    /// The root with this name.
    pub fn root(&self, name: &str) -> Option<&RootSpec> {
        self.roots.iter().find(|r| r.name == name)
    }

    pub(crate) fn compile(&self) -> Result<CompiledSpec> {
        if self.compression_level > 9 {
            return Err(Error::Spec(format!(
                "compression_level {} is not 0-9",
                self.compression_level
            )));
        }
        let mut roots = Vec::with_capacity(self.roots.len());
        for (i, root) in self.roots.iter().enumerate() {
            check_root_name(&root.name)?;
            if !root.path.is_absolute() {
                return Err(Error::Spec(format!(
                    "root `{}`: path {} is not absolute",
                    root.name,
                    root.path.display()
                )));
            }
            for other in self.roots.iter().take(i) {
                if other.name == root.name {
                    return Err(Error::Spec(format!(
                        "root name `{}` is used twice",
                        root.name
                    )));
                }
                if other.path.starts_with(&root.path) || root.path.starts_with(&other.path) {
                    return Err(Error::Spec(format!(
                        "roots `{}` and `{}` overlap ({} and {})",
                        other.name,
                        root.name,
                        other.path.display(),
                        root.path.display()
                    )));
                }
            }
            roots.push(CompiledRoot {
                include: glob_set(&root.include, &root.name)?,
                exclude: glob_set(&root.exclude, &root.name)?,
            });
        }
        Ok(CompiledSpec {
            roots,
            node: glob_set(&self.node, "node")?,
        })
    }
}

/// Root names are path components of every entry: keep them plain.
pub(crate) fn check_root_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Spec(format!(
            "root name `{name}` must be 1-64 ASCII letters, digits, `-` or `_`"
        )))
    }
}

fn glob_set(patterns: &[String], owner: &str) -> Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Spec(format!("`{owner}`: glob `{pattern}`: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| Error::Spec(format!("`{owner}`: {e}")))
}

/// A spec with its globs compiled.
pub(crate) struct CompiledSpec {
    /// Same order as [`BundleSpec::roots`].
    pub(crate) roots: Vec<CompiledRoot>,
    /// Config class `node`, over `<root>/<rel>`.
    pub(crate) node: GlobSet,
}

pub(crate) struct CompiledRoot {
    pub(crate) include: GlobSet,
    pub(crate) exclude: GlobSet,
}

impl CompiledSpec {
    /// Whether `<root>/<rel>` is of config class `node`.
    pub(crate) fn is_node_class(&self, entry: &str) -> bool {
        self.node.is_match(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bundle_table_and_ignores_the_rest() {
        let text = r#"
            [node]
            id = 1
            [bundle]
            node = ["web-conf/server.xml"]
            [[bundle.roots]]
            name = "enrollment"
            path = "/usr/local/enrollment"
            [[bundle.roots]]
            name = "prompts"
            path = "/srv/prompts"
            include = ["**/*.wav"]
            [bundle.limits]
            max_entries = 10
        "#;
        let spec = BundleSpec::from_node_config(text).unwrap();
        assert_eq!(spec.roots.len(), 2);
        assert_eq!(spec.roots[0].include, vec!["**"]);
        assert_eq!(spec.roots[1].include, vec!["**/*.wav"]);
        assert_eq!(spec.limits.max_entries, 10);
        assert_eq!(spec.limits.max_ratio, Limits::default().max_ratio);
        assert!(!spec.allow_setid);
        assert!(!spec.allow_world_writable);
        assert_eq!(spec.owners, vec!["root"]);
        assert_eq!(
            spec,
            BundleSpec {
                roots: spec.roots.clone(),
                node: spec.node.clone(),
                limits: spec.limits,
                ..BundleSpec::default()
            }
        );
        assert_eq!(spec.compression_level, 6);
        spec.validate().unwrap();
    }

    #[test]
    fn rejects_bad_names_relative_paths_overlaps_and_globs() {
        let bad = [
            (RootSpec::new("a/b", "/x"), "root name"),
            (RootSpec::new("a", "x"), "not absolute"),
            (
                RootSpec {
                    include: vec!["[".into()],
                    ..RootSpec::new("a", "/x")
                },
                "glob",
            ),
        ];
        for (root, want) in bad {
            let spec = BundleSpec {
                roots: vec![root],
                ..BundleSpec::default()
            };
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let spec = BundleSpec {
            roots: vec![RootSpec::new("a", "/x"), RootSpec::new("b", "/x/y")],
            ..BundleSpec::default()
        };
        assert!(spec.validate().unwrap_err().to_string().contains("overlap"));
    }

    #[test]
    fn the_example_is_valid() {
        let spec = BundleSpec::from_node_config(BundleSpec::EXAMPLE).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.roots.len(), 3);
        assert_eq!(
            spec.root("enrollment").unwrap().path,
            PathBuf::from("/usr/local/enrollment")
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = BundleSpec::from_node_config("[bundle]\nrots = []\n").unwrap_err();
        assert!(err.to_string().contains("rots"), "{err}");
    }
}
