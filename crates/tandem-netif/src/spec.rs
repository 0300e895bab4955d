//! Which address goes where: address, prefix, interface and label.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::Error;

/// The interface of the seed (`eth0`, "physical Ethernet port 1").
pub const DEFAULT_IFACE: &str = "eth0";
/// Suffix that makes the node address's label from the interface name (`eth0:0`).
pub const NODE_LABEL_SUFFIX: &str = ":0";
/// Longest interface name or label the kernel keeps (`IFNAMSIZ` - 1).
pub const MAX_LABEL_LEN: usize = 15;

/// An address with its prefix, the interface it belongs on and its label.
///
/// Labels are an IPv4 notion (`ip addr` shows them as `eth0:0`); for IPv6
/// addresses the label is ignored.
///
/// ```
/// use tandem_netif::AddressSpec;
///
/// let shared = AddressSpec::shared("192.0.2.10/24".parse()?, "eth0");
/// assert_eq!(shared.label.as_deref(), Some("eth0"));
/// let node = AddressSpec::node("192.0.2.11/24".parse()?, "eth0");
/// assert_eq!(node.label.as_deref(), Some("eth0:0"));
/// let custom = AddressSpec::node("192.0.2.11/24".parse()?, "eth0").with_label("eth0:ha");
/// assert_eq!(custom.label.as_deref(), Some("eth0:ha"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AddressSpec {
    /// The address and its prefix length, e.g. `192.0.2.10/24`.
    pub addr: IpNet,
    /// The interface, e.g. `eth0`.
    pub iface: String,
    /// The label (IPv4 only), e.g. `eth0:0`; `None` lets the kernel use the
    /// interface name.
    pub label: Option<String>,
}

impl AddressSpec {
    /// The shared address (the seed's eth0): labelled with the interface name.
    pub fn shared(addr: IpNet, iface: &str) -> AddressSpec {
        AddressSpec {
            addr,
            iface: iface.to_string(),
            label: Some(iface.to_string()),
        }
    }

    /// The node address (the seed's eth0:0): labelled `<iface>:0`.
    pub fn node(addr: IpNet, iface: &str) -> AddressSpec {
        AddressSpec {
            addr,
            iface: iface.to_string(),
            label: Some(format!("{iface}{NODE_LABEL_SUFFIX}")),
        }
    }

    /// The same address with another label.
    pub fn with_label(self, label: impl Into<String>) -> AddressSpec {
        AddressSpec {
            label: Some(label.into()),
            ..self
        }
    }

    /// The address without prefix.
    pub fn ip(&self) -> IpAddr {
        self.addr.addr()
    }

    /// The label that goes to the kernel: the configured one for IPv4, none for IPv6.
    pub(crate) fn kernel_label(&self) -> Option<&str> {
        match self.addr {
            IpNet::V4(_) => self.label.as_deref(),
            IpNet::V6(_) => None,
        }
    }

    /// Checks the interface name and label the way `ip addr add` does: a label
    /// is at most 15 bytes and starts with the interface name.
    pub fn validate(&self) -> Result<(), Error> {
        validate_iface(&self.iface)?;
        let Some(label) = self.kernel_label() else {
            return Ok(());
        };
        let invalid = |reason: String| {
            Err(Error::InvalidLabel {
                label: label.to_string(),
                iface: self.iface.clone(),
                reason,
            })
        };
        if label.len() > MAX_LABEL_LEN {
            return invalid(format!("it is longer than {MAX_LABEL_LEN} bytes"));
        }
        if !label.starts_with(self.iface.as_str()) {
            return invalid("a label must start with the interface name (as in eth0:0)".into());
        }
        if label
            .bytes()
            .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return invalid("it contains a slash, whitespace or NUL".into());
        }
        Ok(())
    }
}

/// Checks an interface name as the kernel would accept it.
pub(crate) fn validate_iface(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("the name is empty".to_string())
    } else if name.len() > MAX_LABEL_LEN {
        Some(format!("the name is longer than {MAX_LABEL_LEN} bytes"))
    } else if name
        .bytes()
        .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        Some("the name contains a slash, colon, whitespace or NUL".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidInterface {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn the_seed_labels_are_the_defaults() {
        let shared = AddressSpec::shared(net("192.0.2.10/24"), DEFAULT_IFACE);
        assert_eq!(shared.kernel_label(), Some("eth0"));
        let node = AddressSpec::node(net("192.0.2.11/24"), DEFAULT_IFACE);
        assert_eq!(node.kernel_label(), Some("eth0:0"));
        assert!(shared.validate().is_ok() && node.validate().is_ok());
        let v6 = AddressSpec::node(net("2001:db8::11/64"), DEFAULT_IFACE);
        assert_eq!(v6.kernel_label(), None, "IPv6 addresses carry no label");
    }

    #[test]
    fn labels_follow_the_rules_of_ip_addr_add() {
        let spec = AddressSpec::node(net("192.0.2.11/24"), "eth0");
        let err = spec.clone().with_label("eth1:0").validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("must start with the interface name"),
            "{err}"
        );
        let err = spec
            .clone()
            .with_label("eth0:0123456789ab")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("longer than 15"), "{err}");
        let err = AddressSpec::node(net("192.0.2.11/24"), "")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = AddressSpec::shared(net("192.0.2.10/24"), "eth0:1")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("colon"), "{err}");
    }

    proptest! {
        #[test]
        fn validation_never_panics(iface in ".{0,20}", label in proptest::option::of(".{0,20}")) {
            let spec = AddressSpec { addr: net("192.0.2.10/24"), iface, label };
            let _ = spec.validate();
        }
    }
}
