//! `cargo xtask lab`: the namespace lab of `DESIGN.md` for people, with the plain
//! namespace names `node1`, `node2` and `client`; `cut` / `uncut` and
//! `partition` / `heal` rehearse an unplanned failover without knowing the
//! bridge's port names.

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};

/// Arguments of `cargo xtask lab`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(clap::Subcommand)]
enum LabCommand {
    /// Build namespaces node1, node2 and client on one bridge, with the lab addresses.
    Up {
        /// Leave the node addresses unconfigured (for trying `failover set-deployment`).
        #[arg(long)]
        no_node_addresses: bool,
        /// Also give every host an IPv6 address `2001:db8::<n>/64`.
        #[arg(long)]
        ipv6: bool,
    },
    /// Remove the lab: its namespaces, veth pairs and bridge.
    Down,
    /// Show the lab's namespaces, addresses and who reaches whom.
    Status,
    /// Cut a host's cable: nobody reaches it until `uncut` (rehearse "the active is down").
    ///
    /// Its bridge port goes down, so its eth0 loses carrier and nobody reaches it
    /// (nor it anybody). Cutting the active node rehearses the seed's "the active
    /// is down": its peer link and status page go quiet and the shared address
    /// stops answering. Cutting `client` takes the gateway (192.0.2.1) away from
    /// both nodes, so neither passes the isolation check.
    Cut {
        /// node1, node2 or client.
        host: Host,
    },
    /// Plug a host's cable back in (undo `cut`).
    Uncut {
        /// node1, node2 or client.
        host: Host,
    },
    /// Cut only the link between node1 and node2 (both still reach the client); `heal` ends it.
    ///
    /// Each node sees its peer lost but still reaches the gateway, so with
    /// automatic failover the standby claims the shared address while the active
    /// keeps it: the split brain the epochs resolve once `heal` runs.
    Partition,
    /// End a partition made by `partition`: node1 and node2 reach each other again.
    Heal,
    /// Run a command inside a host's namespace, e.g. `cargo xtask lab exec node1 ip addr`.
    Exec {
        /// node1, node2 or client.
        host: Host,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Up {
            no_node_addresses,
            ipv6,
        } => {
            let config = LabConfig {
                node_addresses: !no_node_addresses,
                ipv6,
                plain_names: true,
            };
            let lab = Lab::up(config).context("building the lab")?;
            println!(
                "lab is up: namespaces node1, node2, client; bridge in {}",
                lab.switch_namespace()
            );
            print_status(&lab)?;
            lab.keep();
            Ok(())
        }
        LabCommand::Down => {
            let removed = Lab::down_plain().context("removing the lab")?;
            if removed.is_empty() {
                println!("no lab to remove");
            } else {
                println!("removed namespaces: {}", removed.join(", "));
            }
            Ok(())
        }
        LabCommand::Status => print_status(&attached()?),
        LabCommand::Cut { host } => {
            let lab = attached()?;
            lab.cut(host)
                .with_context(|| format!("cutting {host}'s cable"))?;
            println!(
                "cut {host}'s cable: {} ({host}) reaches nobody until `cargo xtask lab uncut {host}`",
                host.addr()
            );
            Ok(())
        }
        LabCommand::Uncut { host } => {
            let lab = attached()?;
            lab.restore(host)
                .with_context(|| format!("plugging {host}'s cable back in"))?;
            println!("plugged {host}'s cable back in");
            Ok(())
        }
        LabCommand::Partition => {
            let lab = attached()?;
            lab.partition_nodes(true)
                .context("partitioning node1 from node2")?;
            println!(
                "node1 and node2 no longer reach each other (both still reach the client); \
                 `cargo xtask lab heal` ends it"
            );
            Ok(())
        }
        LabCommand::Heal => {
            let lab = attached()?;
            lab.partition_nodes(false)
                .context("healing the partition between node1 and node2")?;
            println!("node1 and node2 reach each other again");
            Ok(())
        }
        LabCommand::Exec { host, command } => {
            let lab = attached()?;
            let (program, rest) = command.split_first().context("no command given")?;
            let status = lab
                .command(host, program)
                .args(rest)
                .status()
                .with_context(|| format!("running {program} in {host}"))?;
            if !status.success() {
                bail!("{program} in {host} exited with {status}");
            }
            Ok(())
        }
    }
}

/// The lab with the plain names, or an error telling how to build one.
fn attached() -> anyhow::Result<Lab> {
    match Lab::attach_plain() {
        Some(lab) => Ok(lab),
        None => bail!("no lab is up; build one with `cargo xtask lab up`"),
    }
}

fn print_status(lab: &Lab) -> anyhow::Result<()> {
    for host in Host::ALL {
        let out = lab.exec(host, "ip", &["-br", "addr", "show", "dev", "eth0"])?;
        let mac = lab
            .mac(host)
            .map(|m| format_mac(&m))
            .unwrap_or_else(|_| "?".into());
        print!(
            "{:<7} {mac}  {}",
            host.name(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let cut: Vec<&str> = Host::ALL
        .into_iter()
        .filter(|h| lab.is_cut(*h).unwrap_or(false))
        .map(Host::name)
        .collect();
    if !cut.is_empty() {
        println!(
            "cut cables: {} (`cargo xtask lab uncut HOST`)",
            cut.join(", ")
        );
    }
    if lab.is_partitioned().unwrap_or(false) {
        println!("node1 and node2 are partitioned (`cargo xtask lab heal`)");
    }
    println!("reachability (TCP to each host's own address):");
    for from in Host::ALL {
        let row: Vec<String> = Host::ALL
            .iter()
            .filter(|to| **to != from)
            .map(|to| {
                let ok = lab.can_reach(from, *to).unwrap_or(false);
                format!("{to}: {}", if ok { "ok" } else { "UNREACHABLE" })
            })
            .collect();
        println!("  {:<7} -> {}", from.name(), row.join(", "));
    }
    Ok(())
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
