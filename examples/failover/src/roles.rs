//! `set-deployment`, `set-server`, `status`, `boot`, `agent` and `keygen`: the
//! node's role and deployment, through `tandem-node`.
//!
//! While the node's agent runs, role commands go to it over its control socket;
//! without an agent the command opens the node itself, as the seed's tools did.

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_node::control::{self, ControlError, Request, Response};
use tandem_node::{Node, NodeConfig, Report, StatusSnapshot};
use tandem_role::{DeploymentMode, Event, NodeId, Role, StateFile};

use crate::Common;

/// How long a tool waits for the agent to carry out a command.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Where `keygen` writes the site key unless told otherwise.
const DEFAULT_KEY_FILE: &str = "/etc/tandem/authkey";

/// Arguments of `set-deployment`.
#[derive(clap::Args)]
pub(crate) struct SetDeploymentArgs {
    /// `failover` (two nodes, one active) or `single` (this node alone).
    mode: DeploymentMode,
    /// This node's id in the site: 1 or 2.
    #[arg(long, value_name = "N")]
    node_id: Option<NodeId>,
    /// The node address (the seed's eth0:0), as IP/prefix, or a plain IP with
    /// --netmask (asked for on a terminal when missing).
    #[arg(long, value_name = "IP[/PREFIX]")]
    node_address: Option<String>,
    /// Subnet mask of the node address, e.g. 255.255.255.0 (instead of a prefix).
    #[arg(long, value_name = "MASK")]
    netmask: Option<String>,
    /// The default gateway.
    #[arg(long, value_name = "IP")]
    gateway: Option<IpAddr>,
    /// This node's own hostname (the seed's eth0:0 hostname).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// The shared hostname (the seed's eth0 hostname), for `failover check`.
    #[arg(long, value_name = "NAME")]
    shared_hostname: Option<String>,
    /// The shared address both nodes answer on (the seed's eth0): IP/prefix, or
    /// a plain IP, which takes the node address's mask (both are in one subnet).
    #[arg(long, value_name = "IP[/PREFIX]")]
    shared_address: Option<String>,
    /// The other node's node address.
    #[arg(long, value_name = "IP")]
    peer_address: Option<IpAddr>,
    /// The physical interface (default eth0).
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    /// Also set the machine's hostname now (it is always written to the config).
    /// Off by default so that running the tool in a test namespace never renames
    /// the machine.
    #[arg(long)]
    apply_hostname: bool,
    /// Never prompt: fail when a value is missing.
    #[arg(long)]
    no_prompt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `set-server`.
#[derive(clap::Args)]
pub(crate) struct SetServerArgs {
    /// `active` (take the shared address) or `standby` (give it up).
    role: Role,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `status` and `boot`.
#[derive(clap::Args)]
pub(crate) struct JsonArgs {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `keygen`.
#[derive(clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the site key (never replaced if it exists).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY_FILE)]
    key_file: PathBuf,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

/// Runs `event` through the agent when one runs, else on the node itself.
fn carry_out(common: &Common, request: Request, event: Event) -> anyhow::Result<Report> {
    let rt = runtime()?;
    rt.block_on(async {
        match control::request(&common.state_dir, &request, AGENT_TIMEOUT).await {
            Ok(Response::Report(report)) => Ok(report),
            Ok(Response::Error(e)) => bail!("the agent refused the request: {e}"),
            Ok(_) => bail!("the agent answered something unexpected"),
            Err(ControlError::NoAgent { .. }) => {
                let config = NodeConfig::load(&common.config)?;
                let mut node = Node::open_with_database(config, &common.state_dir).await?;
                Ok(node.handle(event).await)
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Prints a report; exit 1 when refused or a step failed.
fn finish(report: &Report, json: bool, done: &str) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for step in &report.steps {
            match &step.error {
                None => println!("  {}", step.action),
                Some(e) => println!("  {}  FAILED: {e}", step.action),
            }
        }
        for fault in &report.faults {
            println!("fault: {fault}");
        }
        if let Some(refusal) = &report.refused {
            eprintln!("refused: {refusal}");
        } else if let Some(state) = &report.state {
            println!(
                "{done}: this node is {} (epoch {})",
                state.role, state.epoch
            );
        }
    }
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn set_server(common: &Common, args: &SetServerArgs) -> anyhow::Result<ExitCode> {
    let report = carry_out(
        common,
        Request::SetServer(args.role),
        Event::SetServer(args.role),
    )?;
    finish(&report, args.json, "set-server")
}

pub(crate) fn switchover(common: &Common, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.block_on(async {
        match control::request(&common.state_dir, &Request::Switchover, AGENT_TIMEOUT).await {
            Ok(Response::Report(report)) => Ok(report),
            Ok(Response::Error(e)) => bail!("switchover refused: {e}"),
            Ok(_) => bail!("the agent answered something unexpected"),
            Err(ControlError::NoAgent { .. }) => bail!(
                "switchover needs the agents of both nodes (no agent runs here): start \
                 `failover agent`, or run `failover set-server standby` on the active node \
                 and then `failover set-server active` here"
            ),
            Err(e) => Err(e.into()),
        }
    })?;
    finish(&report, args.json, "switchover")
}

pub(crate) fn boot(common: &Common, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let report = rt.block_on(async {
        if control::request(&common.state_dir, &Request::Status, AGENT_TIMEOUT).await.is_ok() {
            bail!("the agent of this node is running and has made the boot decision; see `failover status`");
        }
        let config = NodeConfig::load(&common.config)?;
        let mut node = Node::open_with_database(config, &common.state_dir).await?;
        Ok(node.boot().await)
    })?;
    finish(&report, args.json, "boot")
}

pub(crate) fn status(common: &Common, args: &JsonArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let from_agent = rt.block_on(control::request(
        &common.state_dir,
        &Request::Status,
        AGENT_TIMEOUT,
    ));
    let snapshot = match from_agent {
        Ok(Response::Status(snapshot)) => Some(*snapshot),
        Ok(_) => bail!("the agent answered something unexpected"),
        Err(ControlError::NoAgent { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(snapshot) = snapshot {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        } else {
            print_snapshot(&snapshot);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // No agent: what the state file says.
    let state = StateFile::in_dir(&common.state_dir).load()?;
    let Some(state) = state else {
        bail!(
            "no node state in {}: this node has not been set up; run `failover set-deployment failover`",
            common.state_dir.display()
        );
    };
    if args.json {
        println!("{}", serde_json::json!({ "agent": false, "state": state }));
    } else {
        let banner = match (state.deployment, state.role) {
            (DeploymentMode::Single, _) => "Single-server deployment.",
            (DeploymentMode::Failover, Role::Active) => "Failover deployment. Active server.",
            (DeploymentMode::Failover, Role::Standby) => "Failover deployment. Standby server.",
        };
        println!("{banner}");
        println!(
            "  node {} of site {}, epoch {}",
            state.node, state.site, state.epoch
        );
        println!(
            "  standby hold: {}",
            if state.standby_hold {
                "yes (until set-server active)"
            } else {
                "no"
            }
        );
        println!("  replication: {}", state.replication);
        println!("  agent: not running (this is the last persisted state)");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_snapshot(s: &StatusSnapshot) {
    println!("{}", s.banner());
    println!(
        "  node {} of site {} ({}), epoch {}",
        s.state.node, s.state.site, s.hostname, s.state.epoch
    );
    println!(
        "  node address {}; shared address {} {}",
        s.node_address,
        s.shared_address,
        if s.holds_shared_address {
            "held here"
        } else {
            "not held here"
        }
    );
    println!(
        "  standby hold: {}",
        if s.state.standby_hold {
            "yes (until set-server active)"
        } else {
            "no"
        }
    );
    let peer = &s.peer;
    println!(
        "  peer {}: {}{}",
        peer.address,
        match (peer.connected, peer.datagrams) {
            (true, true) => "connected (heartbeats by datagram)",
            (true, false) => "connected (heartbeats on the TCP stream only)",
            (false, _) => "not connected",
        },
        peer.clock_offset_ms
            .map(|o| format!(", clock offset {o:.1} ms"))
            .unwrap_or_default()
    );
    if let Some(witness) = &s.witness {
        println!("  witness: {}", witness.line());
    }
    println!("  replication: {}", s.state.replication);
    if s.alarms.is_empty() {
        println!("  no alarms");
    }
    for alarm in &s.alarms {
        println!("  alarm: {}", alarm.message);
    }
    if !s.alarm_history.is_empty() {
        println!(
            "  {} cleared alarm{} (the status page lists them; the newest: {})",
            s.alarm_history.len(),
            if s.alarm_history.len() == 1 { "" } else { "s" },
            s.alarm_history[0].message
        );
    }
}

pub(crate) fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = tandem_peer::keygen(&args.key_file)?;
    println!(
        "wrote the site key to {} (mode 0600)",
        args.key_file.display()
    );
    println!("fingerprint {}", key.fingerprint());
    println!(
        "copy this file to the other node, to the same path and mode; both nodes need the same key"
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a value from the terminal, as the seed's CLI prompts do.
struct Prompter {
    interactive: bool,
}

impl Prompter {
    /// Asks for a value that may stay empty; without a terminal, the default.
    fn ask_optional(
        &self,
        question: &str,
        default: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        if !self.interactive {
            return Ok(default);
        }
        let shown = default
            .as_deref()
            .map(|d| format!(" [{d}]"))
            .unwrap_or_default();
        print!("{question}{shown} (Enter to skip): ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.trim();
        Ok(if line.is_empty() {
            default
        } else {
            Some(line.to_string())
        })
    }

    fn ask(&self, flag: &str, question: &str, default: Option<String>) -> anyhow::Result<String> {
        if !self.interactive {
            return default
                .with_context(|| format!("missing {flag} (there is no terminal to ask on)"));
        }
        let shown = default
            .as_deref()
            .map(|d| format!(" [{d}]"))
            .unwrap_or_default();
        print!("{question}{shown}: ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.trim();
        match (line.is_empty(), default) {
            (false, _) => Ok(line.to_string()),
            (true, Some(d)) => Ok(d),
            (true, None) => bail!("{flag} is required"),
        }
    }
}

/// `IP/PREFIX`, or `IP` with a dotted netmask.
fn parse_address(text: &str, netmask: Option<&str>, what: &str) -> anyhow::Result<ipnet::IpNet> {
    if let Some(mask) = netmask.filter(|_| !text.contains('/')) {
        let ip: IpAddr = text
            .parse()
            .with_context(|| format!("{what} `{text}` is not an IP address"))?;
        let mask: IpAddr = mask
            .parse()
            .with_context(|| format!("netmask `{mask}` is not a mask like 255.255.255.0"))?;
        return ipnet::IpNet::with_netmask(ip, mask)
            .with_context(|| format!("netmask `{mask}` is not a valid mask for {ip}"));
    }
    text.parse()
        .with_context(|| format!("{what} `{text}` is not IP/PREFIX like 192.0.2.11/24"))
}

pub(crate) fn set_deployment(
    common: &Common,
    args: &SetDeploymentArgs,
) -> anyhow::Result<ExitCode> {
    // A config that exists but does not load is reported, never replaced: the
    // operator's services, hooks and tables are in it.
    let existing = match NodeConfig::load(&common.config) {
        Ok(config) => Some(config),
        Err(_) if !common.config.exists() => None,
        Err(e) => {
            return Err(anyhow::Error::from(e)
                .context("set-deployment keeps the tables you added to the config; fix it first"));
        }
    };
    let config = match args.mode {
        DeploymentMode::Failover => {
            let config = failover_config(args, existing.as_ref())?;
            config.save(&common.config)?;
            if !args.json {
                println!("wrote {}", common.config.display());
            }
            config
        }
        // A single server keeps the node's config as it is (nothing is written,
        // so a refused command changes nothing).
        DeploymentMode::Single => existing.with_context(|| {
            format!("{} does not exist or is invalid: a single-server deployment keeps the node's config", common.config.display())
        })?,
    };
    let rt = runtime()?;
    rt.block_on(apply_network(&config, args.apply_hostname))?;
    let report = carry_out(
        common,
        Request::SetDeployment(args.mode),
        Event::SetDeployment(args.mode),
    )?;
    let code = finish(&report, args.json, "set-deployment")?;
    if !args.json && args.mode == DeploymentMode::Failover && report.succeeded() {
        println!(
            "node {} is standby until `failover set-server active`",
            config.node.id
        );
    }
    Ok(code)
}

/// Builds the failover config from flags, the existing config and prompts.
fn failover_config(
    args: &SetDeploymentArgs,
    existing: Option<&NodeConfig>,
) -> anyhow::Result<NodeConfig> {
    let ask = Prompter {
        interactive: !args.no_prompt && std::io::stdin().is_terminal(),
    };
    let old_net = existing.map(|c| &c.network);
    let node_id: NodeId = match args.node_id {
        Some(id) => id,
        None => ask
            .ask(
                "--node-id",
                "Node id (1 or 2)",
                existing.map(|c| c.node.id.to_string()),
            )?
            .parse()?,
    };
    let node_text = match &args.node_address {
        Some(text) => text.clone(),
        None => ask.ask(
            "--node-address",
            "Node address (eth0:0), IP or IP/prefix",
            old_net.map(|n| n.node_address.to_string()),
        )?,
    };
    // The seed asks for the subnet mask apart: a plain address takes one.
    let netmask = match (&args.netmask, node_text.contains('/')) {
        (Some(mask), _) => Some(mask.clone()),
        (None, true) => None,
        (None, false) => Some(ask.ask(
            "--netmask",
            "Subnet mask",
            old_net.map(|n| n.node_address.netmask().to_string()),
        )?),
    };
    let node_address = parse_address(&node_text, netmask.as_deref(), "node address")?;
    let gateway: IpAddr = match args.gateway {
        Some(gw) => gw,
        None => {
            let text = ask.ask(
                "--gateway",
                "Default gateway",
                old_net.map(|n| n.gateway.to_string()),
            )?;
            text.parse()
                .with_context(|| format!("gateway `{text}` is not an IP address"))?
        }
    };
    let hostname = match &args.hostname {
        Some(name) => name.clone(),
        None => ask.ask(
            "--hostname",
            "Hostname (eth0:0)",
            existing.map(|c| c.node.hostname.clone()),
        )?,
    };
    let shared_text = match &args.shared_address {
        Some(text) => text.clone(),
        None => ask.ask(
            "--shared-address",
            "Shared address (eth0), IP or IP/prefix",
            old_net.map(|n| n.shared_address.to_string()),
        )?,
    };
    // Both addresses are in one subnet: a plain shared address takes the node
    // address's mask.
    let node_mask = node_address.netmask().to_string();
    let shared_address = parse_address(&shared_text, Some(&node_mask), "shared address")?;
    let shared_hostname = match &args.shared_hostname {
        Some(name) => Some(name.clone()),
        None => ask.ask_optional(
            "Shared hostname (eth0), for `failover check`",
            existing.and_then(|c| c.node.shared_hostname.clone()),
        )?,
    };
    let peer_address: IpAddr = match args.peer_address {
        Some(ip) => ip,
        None => {
            let text = ask.ask(
                "--peer-address",
                "The other node's address (its eth0:0)",
                old_net.map(|n| n.peer_address.to_string()),
            )?;
            text.parse()
                .with_context(|| format!("peer address `{text}` is not an IP address"))?
        }
    };
    let interface = args
        .interface
        .clone()
        .or_else(|| old_net.map(|n| n.interface.clone()))
        .unwrap_or_else(|| "eth0".to_string());
    let text = format!(
        "[node]\nid = {}\nhostname = {:?}\n\n[network]\ninterface = {:?}\nshared_address = \"{shared_address}\"\nnode_address = \"{node_address}\"\ngateway = \"{gateway}\"\npeer_address = \"{peer_address}\"\n",
        node_id, hostname, interface
    );
    // Keep every other section of an existing config as it was.
    let mut config = NodeConfig::parse(&text, Path::new("the new node config"))?;
    if let Some(old) = existing {
        config.node.site = old.node.site;
        config.node.shared_hostname = old.node.shared_hostname.clone();
        config.network.node_label = old.network.node_label.clone();
        config.network.reference = old.network.reference;
        config.probe = old.probe.clone();
        config.failover = old.failover.clone();
        config.services = old.services.clone();
        config.hooks = old.hooks.clone();
        config.bundle = old.bundle.clone();
        config.replication = old.replication.clone();
        config.peer = old.peer.clone();
    }
    if let Some(name) = &shared_hostname {
        tandem_netif::validate_hostname(name)
            .with_context(|| format!("shared hostname `{name}`"))?;
        config.node.shared_hostname = Some(name.clone());
    }
    Ok(config)
}

/// Configures the node address (eth0:0) with its gateway, and the hostname.
async fn apply_network(config: &NodeConfig, apply_hostname: bool) -> anyhow::Result<()> {
    let net = &config.network;
    let interfaces = tandem_netif::Interfaces::new()?;
    let spec = tandem_netif::AddressSpec::node(net.node_address, &net.interface)
        .with_label(net.node_label());
    interfaces
        .configure_node_address(&spec, Some(net.gateway))
        .await
        .with_context(|| {
            format!(
                "configuring the node address {} on {}",
                net.node_address, net.interface
            )
        })?;
    if apply_hostname {
        tandem_netif::set_hostname(&config.node.hostname)?;
    }
    Ok(())
}
