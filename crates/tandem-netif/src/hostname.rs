//! The node's hostname (the seed's set-deployment sets it).
//!
//! The hostname belongs to the UTS namespace of the calling thread. Tests run
//! [`set_hostname`] on a dedicated thread that has called
//! `unshare(CLONE_NEWUTS)` first, so a test never renames the machine.

use crate::Error;

/// Longest hostname Linux accepts (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Checks that `name` is a valid hostname (RFC 1123): dot-separated labels of
/// 1–63 letters, digits and hyphens, not starting or ending with a hyphen,
/// at most 64 bytes in all.
pub fn validate_hostname(name: &str) -> Result<(), Error> {
    let invalid = |reason: String| {
        Err(Error::InvalidHostname {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty".into());
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return invalid(format!("it is longer than {MAX_HOSTNAME_LEN} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return invalid("it has an empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > 63 {
            return invalid(format!("label `{label}` is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid(format!("label `{label}` starts or ends with a hyphen"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return invalid(format!(
                "`{}` is not allowed (letters, digits, hyphens and dots only)",
                c.escape_default()
            ));
        }
    }
    Ok(())
}

/// Sets the hostname of the calling thread's UTS namespace, after checking it
/// with [`validate_hostname`]. Needs `CAP_SYS_ADMIN`. Writing `/etc/hostname`
/// so the name survives a reboot is the caller's business.
pub fn set_hostname(name: &str) -> Result<(), Error> {
    validate_hostname(name)?;
    nix::unistd::sethostname(name).map_err(|errno| {
        let source = std::io::Error::from(errno);
        let action = format!("set the hostname to {name}");
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            Error::NotPermitted {
                action,
                privilege: "CAP_SYS_ADMIN",
                source,
            }
        } else {
            Error::System { action, source }
        }
    })
}

/// The hostname of the calling thread's UTS namespace.
pub fn hostname() -> Result<String, Error> {
    let name = nix::unistd::gethostname().map_err(|errno| Error::System {
        action: "read the hostname".into(),
        source: errno.into(),
    })?;
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_style_names_pass() {
        for ok in ["meetings", "meetings1.example.com", "node-2", "a", "x1"] {
            assert!(validate_hostname(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases = [
            ("", "empty"),
            ("-node", "hyphen"),
            ("node-", "hyphen"),
            ("a..b", "empty label"),
            ("node_1", "`_` is not allowed"),
            ("münchen", "not allowed"),
            ("a b", "not allowed"),
        ];
        for (name, why) in cases {
            let err = validate_hostname(name).unwrap_err();
            assert!(err.to_string().contains(why), "{name}: {err}");
        }
        let long = "a".repeat(65);
        assert!(
            validate_hostname(&long)
                .unwrap_err()
                .to_string()
                .contains("longer than 64")
        );
    }

    proptest! {
        #[test]
        fn validation_never_panics(name in "\\PC{0,80}") {
            let _ = validate_hostname(&name);
        }

        #[test]
        fn valid_names_are_accepted(labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4)) {
            let name = labels.join(".");
            prop_assert!(validate_hostname(&name).is_ok(), "{}", name);
        }
    }
}
