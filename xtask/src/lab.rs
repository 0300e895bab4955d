//! `cargo xtask lab`: the namespace lab of `DESIGN.md` for people, with the plain
//! namespace names `node1`, `node2` and `client`.

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
        /// Also give every host an IPv6 address 2001:db8::<n>/64.
        #[arg(long)]
        ipv6: bool,
    },
    /// Remove the lab: its namespaces, veth pairs and bridge.
    Down,
    /// Show the lab's namespaces, addresses and who reaches whom.
    Status,
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
        LabCommand::Status => match Lab::attach_plain() {
            Some(lab) => print_status(&lab),
            None => bail!("no lab is up; build one with `cargo xtask lab up`"),
        },
        LabCommand::Exec { host, command } => {
            let Some(lab) = Lab::attach_plain() else {
                bail!("no lab is up; build one with `cargo xtask lab up`");
            };
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
