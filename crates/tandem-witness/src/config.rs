//! The `[witness]` table of the node config, its validation, and the timing rule
//! that keeps a holder's step-down ahead of etcd's own lease expiry.
//!
//! The rule is Patroni's (`loop_wait + 2 * retry_timeout <= ttl`), measured from
//! the *send* time of the last keep-alive etcd acknowledged: etcd cannot have
//! started that lease's countdown before the request left, so a holder that steps
//! down [`WitnessConfig::step_down_after`] after that send time is gone before
//! the TTL can have run out anywhere. Between the renewal that keeps the lease and
//! that deadline there is room for one more renewal interval and two whole request
//! timeouts (a retry).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::{NodeId, SiteId};

use crate::WitnessError;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/tandem";
/// Default lease TTL in seconds.
pub const DEFAULT_TTL_S: u32 = 3;
/// Smallest lease TTL accepted, in seconds.
pub const MIN_TTL_S: u32 = 2;
/// Largest lease TTL accepted, in seconds (an hour: a longer one is a typo).
pub const MAX_TTL_S: u32 = 3600;
/// Default per-request timeout in milliseconds.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 500;
/// Smallest per-request timeout accepted, in milliseconds.
pub const MIN_REQUEST_TIMEOUT_MS: u64 = 10;
/// Time the holder is granted for releasing the shared address once it decides to
/// step down; part of the margin between the step-down deadline and the TTL.
pub const RELEASE_MARGIN: Duration = Duration::from_millis(500);

/// The `[witness]` table of a node's config.
///
/// ```toml
/// [witness]
/// endpoints = ["http://192.0.2.21:2379", "http://192.0.2.22:2379", "http://192.0.2.23:2379"]
/// prefix = "/tandem"      # default
/// ttl_s = 3               # default; at least 2
/// request_timeout_ms = 500 # default
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The etcd members' client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Prefix of tandem's keys: starts with `/`, no trailing `/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Lease TTL in seconds (at least 2).
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u32,
    /// Timeout of every request to etcd, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// TLS for `https://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// etcd user name (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// File holding the user's password (0600 or stricter: a file readable by group
    /// or others is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// The files of a TLS connection to etcd (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificate that signed the members' certificates.
    pub ca_file: PathBuf,
    /// This node's client certificate (with `key_file`), when etcd asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}
fn default_ttl_s() -> u32 {
    DEFAULT_TTL_S
}
fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

impl WitnessConfig {
    /// A config with these endpoints and every default.
    pub fn new(endpoints: Vec<String>) -> WitnessConfig {
        WitnessConfig {
            endpoints,
            prefix: default_prefix(),
            ttl_s: DEFAULT_TTL_S,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            tls: None,
            user: None,
            password_file: None,
        }
    }

    /// Checks every field; the error names the field and what to change. Reads no
    /// file (see [`WitnessConfig::load_password`]).
    pub fn validate(&self) -> Result<(), WitnessError> {
        if self.endpoints.is_empty() {
            return Err(config_error(
                "endpoints",
                "name at least one etcd member, e.g. \"http://192.0.2.21:2379\"",
            ));
        }
        for endpoint in &self.endpoints {
            check_endpoint(endpoint, self.tls.is_some())?;
        }
        check_prefix(&self.prefix)?;
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&self.ttl_s) {
            return Err(config_error(
                "ttl_s",
                format!(
                    "{} is out of range; the lease TTL is {MIN_TTL_S} to {MAX_TTL_S} seconds",
                    self.ttl_s
                ),
            ));
        }
        if self.request_timeout_ms < MIN_REQUEST_TIMEOUT_MS {
            return Err(config_error(
                "request_timeout_ms",
                format!(
                    "{} is too short; at least {MIN_REQUEST_TIMEOUT_MS}",
                    self.request_timeout_ms
                ),
            ));
        }
        self.check_timing()?;
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(config_error(
                "tls",
                "cert_file and key_file go together: give both or neither",
            ));
        }
        match (&self.user, &self.password_file) {
            (Some(user), Some(_)) if user.is_empty() => {
                Err(config_error("user", "the user name is empty"))
            }
            (Some(_), None) => Err(config_error(
                "password_file",
                "`user` is set; name the file holding its password",
            )),
            (None, Some(_)) => Err(config_error(
                "user",
                "`password_file` is set; name the etcd user it belongs to",
            )),
            _ => Ok(()),
        }
    }

    /// The timing rule: `renew_every + 2 * request_timeout <= step_down_after`.
    fn check_timing(&self) -> Result<(), WitnessError> {
        let needed = self
            .renew_every()
            .saturating_add(self.request_timeout().saturating_mul(2));
        let available = self.step_down_after();
        if self.margin() >= self.ttl() || needed > available {
            return Err(config_error(
                "ttl_s/request_timeout_ms",
                format!(
                    "a renewal every {} ms plus two request timeouts of {} ms must fit in the \
                     {} ms before the holder steps down (ttl_s {} s minus {} ms to release); \
                     raise ttl_s or lower request_timeout_ms",
                    self.renew_every().as_millis(),
                    self.request_timeout_ms,
                    available.as_millis(),
                    self.ttl_s,
                    self.margin().as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// The leader key of `site`: `<prefix>/<site>/leader`, the site in decimal.
    pub fn leader_key(&self, site: SiteId) -> String {
        format!("{}/{site}/leader", self.prefix)
    }

    /// The key [`crate::Witness::check`] writes and deletes: `<prefix>/<site>/check-<node>`.
    pub fn check_key(&self, site: SiteId, node: NodeId) -> String {
        format!("{}/{site}/check-{node}", self.prefix)
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ttl_s))
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How often the holder renews its lease: a third of the TTL.
    pub fn renew_every(&self) -> Duration {
        self.ttl() / 3
    }

    /// The margin kept between the step-down deadline and the TTL: one request
    /// timeout (a keep-alive answered late still counts from its send time) plus
    /// [`RELEASE_MARGIN`] to release the shared address.
    pub fn margin(&self) -> Duration {
        self.request_timeout().saturating_add(RELEASE_MARGIN)
    }

    /// How long after the send time of the last keep-alive etcd acknowledged the
    /// holder must have stepped down: the TTL minus [`WitnessConfig::margin`].
    pub fn step_down_after(&self) -> Duration {
        self.ttl().saturating_sub(self.margin())
    }

    /// Reads the password of `user` from `password_file`, refusing a file that group
    /// or others may read. `None` without a user.
    pub fn load_password(&self) -> Result<Option<String>, WitnessError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let io = |source| WitnessError::File {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(config_error(
                "password_file",
                format!(
                    "{} has mode {mode:04o}; a password file must be readable by its owner \
                     only: chmod 600 {}",
                    path.display(),
                    path.display()
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let password = text.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(config_error(
                "password_file",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Some(password))
    }
}

fn check_endpoint(endpoint: &str, tls: bool) -> Result<(), WitnessError> {
    let bad = |why: String| config_error("endpoints", format!("`{endpoint}`: {why}"));
    let (rest, https) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(bad(
            "write it as http://host:port or https://host:port".into()
        ));
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("the port is missing (etcd's client port is usually 2379)".into()))?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if !host_ok {
        return Err(bad(format!("`{host}` is not a host name or address")));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad(format!("`{port}` is not a port")));
    }
    match (https, tls) {
        (true, false) => Err(bad(
            "an https:// endpoint needs a [witness.tls] table".into()
        )),
        (false, true) => Err(bad(
            "[witness.tls] is set, so every endpoint must be https://".into(),
        )),
        _ => Ok(()),
    }
}

fn check_prefix(prefix: &str) -> Result<(), WitnessError> {
    let why = if !prefix.starts_with('/') {
        Some("must start with `/`")
    } else if prefix.len() > 1 && prefix.ends_with('/') {
        Some("must not end with `/`")
    } else if prefix == "/" {
        Some("must name a directory below `/`, e.g. \"/tandem\"")
    } else if prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not hold spaces or control characters")
    } else {
        None
    };
    match why {
        Some(why) => Err(config_error("prefix", format!("`{prefix}` {why}"))),
        None => Ok(()),
    }
}

fn config_error(field: &'static str, reason: impl Into<String>) -> WitnessError {
    WitnessError::Config {
        field,
        reason: reason.into(),
    }
}

/// Whether `path` exists (for error messages naming files).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, WitnessError> {
    std::fs::read(path).map_err(|source| WitnessError::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn config() -> WitnessConfig {
        WitnessConfig::new(vec!["http://192.0.2.21:2379".into()])
    }

    fn field_of(result: Result<(), WitnessError>) -> &'static str {
        match result {
            Err(WitnessError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_parse_from_a_minimal_table_and_are_valid() {
        let c: WitnessConfig = toml::from_str(r#"endpoints = ["http://192.0.2.21:2379"]"#).unwrap();
        assert_eq!(c, config());
        c.validate().unwrap();
        let site = |n| SiteId::new(n).unwrap();
        assert_eq!(c.leader_key(site(7)), "/tandem/7/leader");
        assert_eq!(c.check_key(site(7), NodeId::Two), "/tandem/7/check-2");
        // Sites past 255 have keys of their own.
        assert_eq!(c.leader_key(site(300)), "/tandem/300/leader");
        assert_eq!(c.ttl(), Duration::from_secs(3));
        assert_eq!(c.renew_every(), Duration::from_secs(1));
        assert_eq!(c.step_down_after(), Duration::from_secs(2));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<WitnessConfig, _> =
            toml::from_str("endpoints = [\"http://a:2379\"]\nttl = 3");
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut c = config();
        c.endpoints.clear();
        assert_eq!(field_of(c.validate()), "endpoints");
        for bad in [
            "192.0.2.21:2379",
            "http://192.0.2.21",
            "http://:2379",
            "http://h:0",
            "http://h:99999",
            "ftp://h:1",
            "http://a b:1",
        ] {
            let mut c = config();
            c.endpoints = vec![bad.into()];
            assert_eq!(field_of(c.validate()), "endpoints", "{bad}");
        }
        for bad in ["tandem", "/tandem/", "/", "/a b"] {
            let mut c = config();
            c.prefix = bad.into();
            assert_eq!(field_of(c.validate()), "prefix", "{bad}");
        }
        let mut c = config();
        c.ttl_s = 1;
        assert_eq!(field_of(c.validate()), "ttl_s");
        let mut c = config();
        c.request_timeout_ms = 0;
        assert_eq!(field_of(c.validate()), "request_timeout_ms");
        let mut c = config();
        c.user = Some("tandem".into());
        assert_eq!(field_of(c.validate()), "password_file");
        let mut c = config();
        c.password_file = Some("/etc/tandem/etcd.pw".into());
        assert_eq!(field_of(c.validate()), "user");
    }

    #[test]
    fn tls_and_https_go_together() {
        let mut c = config();
        c.endpoints = vec!["https://etcd1.example:2379".into()];
        assert_eq!(field_of(c.validate()), "endpoints");
        c.tls = Some(TlsFiles {
            ca_file: "/etc/tandem/ca.pem".into(),
            cert_file: None,
            key_file: None,
        });
        c.validate().unwrap();
        c.endpoints.push("http://192.0.2.22:2379".into());
        assert_eq!(field_of(c.validate()), "endpoints");
        c.endpoints.pop();
        c.tls = Some(TlsFiles {
            ca_file: "/etc/tandem/ca.pem".into(),
            cert_file: Some("/etc/tandem/node.pem".into()),
            key_file: None,
        });
        assert_eq!(field_of(c.validate()), "tls");
    }

    #[test]
    fn the_timing_rule_names_both_fields() {
        let mut c = config();
        c.ttl_s = 2;
        // 666 ms + 2 * 500 ms does not fit in 2000 - 1000 ms.
        assert_eq!(field_of(c.validate()), "ttl_s/request_timeout_ms");
        c.request_timeout_ms = 200;
        c.validate().unwrap();
        let mut c = config();
        c.request_timeout_ms = 10_000;
        assert_eq!(field_of(c.validate()), "ttl_s/request_timeout_ms");
    }

    #[test]
    fn a_password_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "secret\n").unwrap();
        let mut c = config();
        c.user = Some("tandem".into());
        c.password_file = Some(path.clone());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(field_of(c.load_password().map(drop)), "password_file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.load_password().unwrap().as_deref(), Some("secret"));
        c.password_file = Some(dir.path().join("missing"));
        assert!(matches!(c.load_password(), Err(WitnessError::File { .. })));
    }

    proptest! {
        #[test]
        fn a_valid_config_always_keeps_the_timing_rule(ttl_s in 0u32..5000, request_timeout_ms in 0u64..100_000) {
            let mut c = config();
            c.ttl_s = ttl_s;
            c.request_timeout_ms = request_timeout_ms;
            if c.validate().is_ok() {
                prop_assert!(c.renew_every() + 2 * c.request_timeout() <= c.step_down_after());
                prop_assert!(c.step_down_after() < c.ttl());
                prop_assert!(c.step_down_after() > Duration::ZERO);
            }
        }

        #[test]
        fn validation_never_panics(endpoint in ".{0,40}", prefix in ".{0,20}", ttl_s in any::<u32>(), rt in any::<u64>()) {
            let mut c = config();
            c.endpoints = vec![endpoint];
            c.prefix = prefix;
            c.ttl_s = ttl_s;
            c.request_timeout_ms = rt;
            let _ = c.validate();
        }
    }
}
