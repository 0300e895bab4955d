//! Links, addresses and the default route through rtnetlink.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::spec::validate_iface;
use crate::{AddressSpec, Error, MacAddr, Result};

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EADDRNOTAVAIL: i32 = 99;
const ENETUNREACH: i32 = 101;

/// What [`Interfaces::claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Claim {
    /// The address was added.
    Added,
    /// The interface already had the address with that prefix; nothing changed.
    AlreadyHeld,
}

/// What [`Interfaces::release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// The address was removed (`copies` entries: normally one).
    Removed {
        /// How many entries for the address were removed.
        copies: usize,
    },
    /// The interface did not have the address; nothing changed.
    NotHeld,
}

/// What [`Interfaces::configure_node_address`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// Whether the address was added or already there.
    pub address: Claim,
    /// Whether a default route via a gateway was set (added or replaced).
    pub default_route: bool,
}

/// An address on an interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Address and prefix length.
    pub addr: IpNet,
    /// The label (IPv4), e.g. `eth0:0`.
    pub label: Option<String>,
    /// A secondary address (IPv4: another address in the subnet of a primary one).
    pub secondary: bool,
    /// Duplicate address detection has not finished (IPv6).
    pub tentative: bool,
}

/// The operational state of a link (RFC 2863, as the kernel reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperState {
    /// Up and able to pass packets.
    Up,
    /// Down.
    Down,
    /// Down because a lower layer is (no carrier, cable cut, peer down).
    LowerLayerDown,
    /// Waiting for an external event.
    Dormant,
    /// In a test mode.
    Testing,
    /// A component is missing.
    NotPresent,
    /// The driver does not report a state.
    Unknown,
}

/// The state of one link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkState {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Hardware address, if the link has one.
    pub mac: Option<MacAddr>,
    /// Administratively up (`ip link set up`).
    pub admin_up: bool,
    /// Carrier present (`LOWER_UP`).
    pub carrier: bool,
    /// Operational state.
    pub oper: OperState,
    /// MTU, if reported.
    pub mtu: Option<u32>,
    /// How many times the carrier came or went since the link was created
    /// (`IFLA_CARRIER_CHANGES`), if reported: a cable pulled and plugged back in
    /// between two readings shows here even when [`LinkState::carrier`] is the
    /// same in both.
    pub carrier_changes: Option<u32>,
}

impl LinkState {
    /// Whether the link can pass packets: administratively up with carrier.
    pub fn is_usable(&self) -> bool {
        self.admin_up && self.carrier
    }
}

/// A handle on the links and addresses of one network namespace (the one of
/// the thread that called [`Interfaces::new`]).
///
/// The netlink connection runs as a task on the tokio runtime and ends when
/// the handle is dropped.
#[derive(Debug)]
pub struct Interfaces {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Interfaces {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Interfaces {
    /// Opens a netlink connection in the calling thread's network namespace.
    /// Must be called inside a tokio runtime.
    pub fn new() -> Result<Interfaces> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::System {
            action: "open a netlink connection".into(),
            source: io::Error::other(format!("{e}; call Interfaces::new inside a tokio runtime")),
        })?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| Error::System {
                action: "open a netlink socket".into(),
                source,
            })?;
        let connection = runtime.spawn(connection);
        Ok(Interfaces { handle, connection })
    }

    /// Adds the address of `spec` to its interface with its label; idempotent.
    ///
    /// Returns [`Claim::AlreadyHeld`] when the interface has the address with
    /// the same prefix already (its label is left as it is), and
    /// [`Error::HeldWithOtherPrefix`] when it has it with another prefix.
    /// IPv6 addresses are added without duplicate address detection
    /// (`nodad`): the probe before a claim has done that job, and a tentative
    /// address would hold up the takeover.
    pub async fn claim(&self, spec: &AddressSpec) -> Result<Claim> {
        spec.validate()?;
        let index = self.index(&spec.iface).await?;
        if let Some(claim) = self.already_held(index, spec).await? {
            return Ok(claim);
        }
        let mut request = self
            .handle
            .address()
            .add(index, spec.ip(), spec.addr.prefix_len());
        let message = request.message_mut();
        if let Some(label) = spec.kernel_label() {
            message
                .attributes
                .push(AddressAttribute::Label(label.to_string()));
        }
        if spec.addr.addr().is_ipv6() {
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(Claim::Added),
            // Someone added it between our look and our add.
            Err(e) if errno(&e) == Some(EEXIST) => self
                .already_held(index, spec)
                .await?
                .ok_or_else(|| netlink_error(format!("add {} to {}", spec.addr, spec.iface), e)),
            Err(e) => Err(netlink_error(
                format!("add {} to {}", spec.addr, spec.iface),
                e,
            )),
        }
    }

    /// Removes every entry of the address of `spec` (any prefix) from its
    /// interface; idempotent. The prefix and label of `spec` do not matter.
    ///
    /// Removing a primary IPv4 address would make the kernel remove the
    /// secondaries of its subnet too (say the node address, when the shared
    /// address was added first). Before that happens this turns on the
    /// interface's `promote_secondaries` setting, so a secondary is promoted
    /// instead.
    pub async fn release(&self, spec: &AddressSpec) -> Result<Release> {
        validate_iface(&spec.iface)?;
        let index = self.index(&spec.iface).await?;
        let all = self.address_messages(index, &spec.iface).await?;
        let (mine, others): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|m| address_of(m).is_some_and(|a| a.addr() == spec.ip()));
        if mine.is_empty() {
            return Ok(Release::NotHeld);
        }
        let mut copies = 0;
        for message in mine {
            if self.is_primary_with_secondaries(&message, &others) {
                enable_promote_secondaries(&spec.iface)?;
            }
            match self.handle.address().del(message).execute().await {
                Ok(()) => copies += 1,
                // Gone already: someone else released it meanwhile.
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(netlink_error(
                        format!("remove {} from {}", spec.ip(), spec.iface),
                        e,
                    ));
                }
            }
        }
        Ok(if copies == 0 {
            Release::NotHeld
        } else {
            Release::Removed { copies }
        })
    }

    /// Configures the node address (the seed's eth0:0): claims `spec` and,
    /// with a gateway, sets the default route via it on the same interface
    /// (replacing an existing default route of the address family). Idempotent.
    pub async fn configure_node_address(
        &self,
        spec: &AddressSpec,
        gateway: Option<IpAddr>,
    ) -> Result<NodeAddress> {
        if let Some(gw) = gateway
            && gw.is_ipv4() != spec.ip().is_ipv4()
        {
            return Err(Error::InvalidConfig {
                what: "gateway",
                reason: format!(
                    "gateway {gw} and node address {} are of different IP versions",
                    spec.addr
                ),
            });
        }
        let address = self.claim(spec).await?;
        let Some(gateway) = gateway else {
            return Ok(NodeAddress {
                address,
                default_route: false,
            });
        };
        let index = self.index(&spec.iface).await?;
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        match self.handle.route().add(route).replace().execute().await {
            Ok(()) => Ok(NodeAddress {
                address,
                default_route: true,
            }),
            Err(e) if errno(&e) == Some(ENETUNREACH) => Err(Error::Gateway {
                gateway,
                iface: spec.iface.clone(),
                source: io::Error::from_raw_os_error(ENETUNREACH),
            }),
            Err(e) => Err(netlink_error(
                format!("set the default route via {gateway} on {}", spec.iface),
                e,
            )),
        }
    }

    /// The addresses on `iface`, IPv4 and IPv6, in the kernel's order.
    pub async fn addresses(&self, iface: &str) -> Result<Vec<Address>> {
        validate_iface(iface)?;
        let index = self.index(iface).await?;
        let messages = self.address_messages(index, iface).await?;
        Ok(messages.iter().filter_map(to_address).collect())
    }

    /// The state of link `iface`.
    pub async fn link_state(&self, iface: &str) -> Result<LinkState> {
        let link = self.link(iface).await?;
        Ok(to_link_state(&link, iface))
    }

    /// Whether `iface` holds `addr` (with any prefix).
    pub async fn holds(&self, iface: &str, addr: IpAddr) -> Result<bool> {
        Ok(self
            .addresses(iface)
            .await?
            .iter()
            .any(|a| a.addr.addr() == addr))
    }

    async fn link(&self, iface: &str) -> Result<LinkMessage> {
        validate_iface(iface)?;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(iface.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(Error::NoSuchInterface { name: iface.into() }),
            Err(e) if errno(&e) == Some(ENODEV) => {
                Err(Error::NoSuchInterface { name: iface.into() })
            }
            Err(e) => Err(netlink_error(format!("read link {iface}"), e)),
        }
    }

    async fn index(&self, iface: &str) -> Result<u32> {
        Ok(self.link(iface).await?.header.index)
    }

    async fn address_messages(&self, index: u32, iface: &str) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error(format!("list the addresses of {iface}"), e))
    }

    /// `Some` when the interface already has the address of `spec`.
    async fn already_held(&self, index: u32, spec: &AddressSpec) -> Result<Option<Claim>> {
        let messages = self.address_messages(index, &spec.iface).await?;
        let held: Vec<IpNet> = messages
            .iter()
            .filter_map(address_of)
            .filter(|a| a.addr() == spec.ip())
            .collect();
        if held
            .iter()
            .any(|a| a.prefix_len() == spec.addr.prefix_len())
        {
            return Ok(Some(Claim::AlreadyHeld));
        }
        match held.first() {
            Some(other) => Err(Error::HeldWithOtherPrefix {
                addr: spec.ip(),
                iface: spec.iface.clone(),
                held: other.prefix_len(),
                wanted: spec.addr.prefix_len(),
            }),
            None => Ok(None),
        }
    }

    /// Whether removing `message` (IPv4, primary) would take secondaries with it.
    fn is_primary_with_secondaries(
        &self,
        message: &AddressMessage,
        others: &[AddressMessage],
    ) -> bool {
        let Some(IpNet::V4(net)) = address_of(message) else {
            return false;
        };
        if is_secondary(message) {
            return false;
        }
        others.iter().any(|m| match address_of(m) {
            Some(IpNet::V4(other)) => is_secondary(m) && net.trunc().contains(&other.addr()),
            _ => false,
        })
    }
}

/// Turns on `net.ipv4.conf.<iface>.promote_secondaries` in the calling
/// thread's network namespace.
fn enable_promote_secondaries(iface: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(iface)
        .join("promote_secondaries");
    std::fs::write(&path, "1").map_err(|source| {
        let action = format!(
            "turn on promote_secondaries for {iface} ({}), which keeps the other addresses of the subnet when the first one is removed",
            path.display()
        );
        if source.kind() == io::ErrorKind::PermissionDenied {
            Error::NotPermitted {
                action,
                privilege: "CAP_NET_ADMIN and a writable /proc/sys",
                source,
            }
        } else {
            Error::System { action, source }
        }
    })
}

fn is_secondary(message: &AddressMessage) -> bool {
    message.header.flags.contains(AddressHeaderFlags::Secondary)
        || message.attributes.iter().any(|a| match a {
            AddressAttribute::Flags(f) => f.contains(AddressFlags::Secondary),
            _ => false,
        })
}

fn is_tentative(message: &AddressMessage) -> bool {
    message.header.flags.contains(AddressHeaderFlags::Tentative)
        || message.attributes.iter().any(|a| match a {
            AddressAttribute::Flags(f) => f.contains(AddressFlags::Tentative),
            _ => false,
        })
}

/// The local address of a message with its prefix: `IFA_LOCAL` for IPv4
/// (`IFA_ADDRESS` is the peer on point-to-point links), `IFA_ADDRESS` for IPv6.
fn address_of(message: &AddressMessage) -> Option<IpNet> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = match message.header.family {
        AddressFamily::Inet => local.or(address),
        _ => address.or(local),
    }?;
    IpNet::new(ip, message.header.prefix_len).ok()
}

fn to_address(message: &AddressMessage) -> Option<Address> {
    Some(Address {
        addr: address_of(message)?,
        label: message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        }),
        secondary: is_secondary(message),
        tentative: is_tentative(message),
    })
}

fn to_link_state(link: &LinkMessage, iface: &str) -> LinkState {
    let mut state = LinkState {
        name: iface.to_string(),
        index: link.header.index,
        mac: None,
        admin_up: link.header.flags.contains(LinkFlags::Up),
        carrier: link.header.flags.contains(LinkFlags::LowerUp),
        oper: OperState::Unknown,
        mtu: None,
        carrier_changes: None,
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => state.name = name.clone(),
            LinkAttribute::Address(bytes) => {
                state.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Mtu(mtu) => state.mtu = Some(*mtu),
            LinkAttribute::CarrierChanges(n) => state.carrier_changes = Some(*n),
            LinkAttribute::OperState(s) => {
                state.oper = match s {
                    State::Up => OperState::Up,
                    State::Down => OperState::Down,
                    State::LowerLayerDown => OperState::LowerLayerDown,
                    State::Dormant => OperState::Dormant,
                    State::Testing => OperState::Testing,
                    State::NotPresent => OperState::NotPresent,
                    _ => OperState::Unknown,
                };
            }
            _ => {}
        }
    }
    state
}

/// The errno of a netlink error reply, positive.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

fn netlink_error(action: String, e: rtnetlink::Error) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(message) => {
            let source = message.to_io();
            match message.raw_code().abs() {
                EPERM | EACCES => Error::NotPermitted {
                    action,
                    privilege: "CAP_NET_ADMIN",
                    source,
                },
                _ => Error::Netlink { action, source },
            }
        }
        other => Error::Netlink {
            action,
            source: io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn nl_error(code: i32) -> rtnetlink::Error {
        let mut message = ErrorMessage::default();
        message.code = NonZeroI32::new(-code);
        rtnetlink::Error::NetlinkError(message)
    }

    #[test]
    fn a_refusal_by_the_kernel_names_the_privilege() {
        let err = netlink_error("add 192.0.2.10/24 to eth0".into(), nl_error(EPERM));
        assert!(matches!(err, Error::NotPermitted { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("add 192.0.2.10/24 to eth0") && text.contains("CAP_NET_ADMIN"),
            "{text}"
        );
        let err = netlink_error("x".into(), nl_error(22));
        assert!(matches!(err, Error::Netlink { .. }), "{err}");
        assert_eq!(errno(&nl_error(EEXIST)), Some(EEXIST));
    }

    #[test]
    fn addresses_are_read_from_local_for_ipv4_and_address_for_ipv6() {
        let mut v4 = AddressMessage::default();
        v4.header.family = AddressFamily::Inet;
        v4.header.prefix_len = 24;
        v4.attributes
            .push(AddressAttribute::Address("192.0.2.99".parse().unwrap()));
        v4.attributes
            .push(AddressAttribute::Local("192.0.2.10".parse().unwrap()));
        v4.attributes.push(AddressAttribute::Label("eth0:0".into()));
        v4.header.flags = AddressHeaderFlags::Secondary;
        let a = to_address(&v4).unwrap();
        assert_eq!(a.addr, "192.0.2.10/24".parse::<IpNet>().unwrap());
        assert_eq!(a.label.as_deref(), Some("eth0:0"));
        assert!(a.secondary && !a.tentative);

        let mut v6 = AddressMessage::default();
        v6.header.family = AddressFamily::Inet6;
        v6.header.prefix_len = 64;
        v6.attributes
            .push(AddressAttribute::Address("2001:db8::10".parse().unwrap()));
        v6.attributes
            .push(AddressAttribute::Flags(AddressFlags::Tentative));
        let a = to_address(&v6).unwrap();
        assert_eq!(a.addr, "2001:db8::10/64".parse::<IpNet>().unwrap());
        assert!(a.tentative && a.label.is_none());

        let mut bad = v6.clone();
        bad.header.prefix_len = 200;
        assert!(
            to_address(&bad).is_none(),
            "an impossible prefix is skipped, not a panic"
        );
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;
    use crate::AnnounceConfig;

    #[test]
    fn handles_and_futures_can_move_between_threads() {
        fn is_send<T: Send + Sync>(_: &T) {}
        fn is_send_future<T: Send>(_: &T) {}
        fn check(ifs: &Interfaces, spec: &AddressSpec) {
            is_send(ifs);
            is_send_future(&ifs.claim(spec));
            is_send_future(&ifs.release(spec));
            is_send_future(&ifs.configure_node_address(spec, None));
            is_send_future(&ifs.addresses("eth0"));
            is_send_future(&ifs.link_state("eth0"));
            is_send_future(&ifs.announce(spec.ip(), "eth0", AnnounceConfig::default()));
        }
        // Checked by the compiler; nothing to run.
        let _ = check;
    }
}
