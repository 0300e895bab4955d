//! The one-line text form of events, as written in trace files and typed in tests:
//! `boot probe=silent isolation=passed`, `peer-claim node=2 epoch=3`, ...
//! Printing is the `Display` impls of `machine.rs`; this module parses.

use std::str::FromStr;

use crate::{Event, Isolation, MacAddr, ParseError, ProbeOutcome};

impl FromStr for Event {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Event, ParseError> {
        let tokens = tokenize(line)?;
        let Some((name, args)) = tokens.split_first() else {
            return Err(ParseError::new("event", line, "empty line"));
        };
        let bad = |why: &str| ParseError::new("event", line, why);
        let key = |k: &str| -> Result<&str, ParseError> {
            args.iter()
                .find_map(|t| t.strip_prefix(k).and_then(|rest| rest.strip_prefix('=')))
                .ok_or_else(|| bad(&format!("missing {k}=...")))
        };
        let only = |n: usize| -> Result<(), ParseError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(bad(&format!("expected {n} argument(s)")))
            }
        };
        let event = match name.as_str() {
            "boot" | "probed" => {
                only(2)?;
                let probe = parse_probe(key("probe")?)?;
                let isolation = match key("isolation")? {
                    "passed" => Isolation::Passed,
                    "failed" => Isolation::Failed,
                    other => return Err(ParseError::new("isolation", other, "passed or failed")),
                };
                if name == "boot" {
                    Event::Boot { probe, isolation }
                } else {
                    Event::Probed { probe, isolation }
                }
            }
            "set-server" => {
                only(1)?;
                Event::SetServer(args[0].parse()?)
            }
            "set-deployment" => {
                only(1)?;
                Event::SetDeployment(args[0].parse()?)
            }
            "identify" => {
                only(2)?;
                Event::Identify {
                    node: key("node")?.parse()?,
                    site: key("site")?.parse()?,
                }
            }
            "peer-claim" | "peer-superseded" => {
                let with_token = name == "peer-claim" && args.len() == 3;
                only(if with_token { 3 } else { 2 })?;
                let node = key("node")?.parse()?;
                let epoch = key("epoch")?
                    .parse::<u64>()
                    .map(crate::Epoch::new)
                    .map_err(|_| bad("epoch must be a number"))?;
                let token = if with_token {
                    Some(parse_token(key("token")?).map_err(|_| bad("token must be a number"))?)
                } else {
                    None
                };
                if name == "peer-claim" {
                    Event::PeerClaim { node, epoch, token }
                } else {
                    Event::PeerSuperseded { node, epoch }
                }
            }
            "lease-acquired" => {
                only(1)?;
                Event::LeaseAcquired {
                    token: parse_token(key("token")?).map_err(|_| bad("token must be a number"))?,
                }
            }
            "lease-held" => {
                only(2)?;
                Event::LeaseHeldByPeer {
                    node: key("node")?.parse()?,
                    token: parse_token(key("token")?).map_err(|_| bad("token must be a number"))?,
                }
            }
            "lease-free" => {
                only(0)?;
                Event::LeaseFree
            }
            "lease-lost" => {
                only(1)?;
                Event::LeaseLost {
                    reason: args[0].clone(),
                }
            }
            "witness-unreachable" => {
                only(1)?;
                Event::WitnessUnreachable {
                    reason: args[0].clone(),
                }
            }
            "witness-reachable" => {
                only(0)?;
                Event::WitnessReachable
            }
            "address-conflict" => {
                only(1)?;
                Event::AddressConflict {
                    mac: key("mac")?.parse()?,
                }
            }
            "resume" => {
                only(0)?;
                Event::Resume
            }
            "peer-lost" => {
                let silent = if args.is_empty() {
                    None
                } else {
                    only(1)?;
                    let ms = key("silent")?
                        .strip_suffix("ms")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad("silent=<milliseconds>ms"))?;
                    Some(std::time::Duration::from_millis(ms))
                };
                Event::PeerLost { silent }
            }
            "peer-still-lost" => {
                only(0)?;
                Event::PeerStillLost
            }
            "peer-back" => {
                only(0)?;
                Event::PeerBack
            }
            "replication-on" => {
                only(0)?;
                Event::ReplicationOn
            }
            "replication-off" => {
                only(0)?;
                Event::ReplicationOff
            }
            "replication-failed" => {
                only(1)?;
                Event::ReplicationFailed {
                    reason: args[0].clone(),
                }
            }
            "step-failed" => {
                only(2)?;
                Event::StepFailed {
                    step: args[0].parse()?,
                    reason: args[1].clone(),
                }
            }
            _ => return Err(bad("unknown event name")),
        };
        Ok(event)
    }
}

fn parse_token(text: &str) -> Result<crate::FenceToken, std::num::ParseIntError> {
    text.parse::<u64>().map(crate::FenceToken::new)
}

fn parse_probe(text: &str) -> Result<ProbeOutcome, ParseError> {
    if text == "silent" {
        return Ok(ProbeOutcome::Silent);
    }
    if let Some(list) = text
        .strip_prefix("answered(")
        .and_then(|t| t.strip_suffix(')'))
    {
        let macs = list
            .split(',')
            .map(MacAddr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(ProbeOutcome::Answered { macs });
    }
    if let Some(reason) = text
        .strip_prefix("error(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return Ok(ProbeOutcome::Error {
            reason: unquote(reason)?,
        });
    }
    Err(ParseError::new(
        "probe outcome",
        text,
        "silent, answered(MAC,...) or error(\"why\")",
    ))
}

/// Splits at spaces outside double quotes. A token that is one quoted string comes
/// back unquoted; quotes inside a token (`error("x y")`) are kept.
fn tokenize(line: &str) -> Result<Vec<String>, ParseError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if quoted {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c.is_whitespace() {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
        } else {
            quoted = c == '"';
            current.push(c);
        }
    }
    if quoted {
        return Err(ParseError::new("event", line, "unterminated quoted string"));
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
        .into_iter()
        .map(|t| {
            if t.starts_with('"') {
                unquote(&t)
            } else {
                Ok(t)
            }
        })
        .collect()
}

/// Undoes the `{:?}` quoting of a string (the escapes `\"`, `\\`, `\n`, `\t`).
fn unquote(text: &str) -> Result<String, ParseError> {
    let bad = || ParseError::new("quoted string", text, "expected \"...\"");
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(bad)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other @ ('"' | '\\' | '\'')) => out.push(other),
                _ => return Err(bad()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_back_from_their_display() {
        for line in [
            "boot probe=silent isolation=passed",
            "probed probe=answered(02:00:00:00:00:01,02:00:00:00:00:02) isolation=failed",
            "probed probe=error(\"no such device: eth9\") isolation=passed",
            "set-server active",
            "set-deployment failover",
            "identify node=2 site=1",
            "peer-claim node=1 epoch=4",
            "peer-claim node=1 epoch=4 token=17",
            "lease-acquired token=9",
            "lease-held node=2 token=12",
            "lease-free",
            "lease-lost \"no member answered\"",
            "witness-unreachable \"connection refused\"",
            "witness-reachable",
            "address-conflict mac=02:00:00:00:00:02",
            "peer-lost",
            "peer-lost silent=1550ms",
            "peer-still-lost",
            "replication-failed \"table locked\"",
            "step-failed claim-shared-address \"permission denied\"",
        ] {
            let event: Event = line.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(event.to_string(), line);
        }
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("", "empty"),
            ("reboot", "unknown event"),
            ("set-server primary", "active standby"),
            ("boot probe=silent", "expected 2"),
            ("peer-claim node=3 epoch=1", "node 1 and node 2"),
            ("replication-failed \"open", "unterminated"),
            ("peer-lost silent=soon", "silent=<milliseconds>ms"),
            ("peer-lost silent=5ms later", "expected 1"),
        ] {
            let err = line.parse::<Event>().expect_err(line).to_string();
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
