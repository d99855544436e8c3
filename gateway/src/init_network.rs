//! `tollgate-gateway init-network`: the I/O shell around [`crate::egress_rules`].
//! Reads flags or env, renders the rules, and applies them with
//! `iptables-restore` and `ip6tables-restore` (or prints them with `--dry-run`).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::egress_rules::{
    AllowedDestination, EgressRules, GatewayUid, IpFamily, has_jump, parse_dns,
};

/// Flags of `init-network`. Every value is parsed into a typed value by clap,
/// so bad input exits non-zero with the parser's message before anything runs.
#[derive(clap::Args, Debug)]
pub struct InitNetworkArgs {
    /// The gateway's UID: the only one whose traffic may leave the pod.
    #[arg(long, env = "TOLLGATE_GATEWAY_UID")]
    pub gateway_uid: GatewayUid,

    /// A non-LLM destination app containers may still reach: CIDR, or
    /// CIDR=PORT[,PORT...] (TCP and UDP). Repeat the flag, or separate with
    /// spaces in the env variable.
    #[arg(long = "allow", env = "TOLLGATE_ALLOW", value_delimiter = ' ')]
    pub allow: Vec<AllowedDestination>,

    /// The cluster DNS resolver(s): the only DNS servers reachable.
    #[arg(long = "dns", env = "TOLLGATE_CLUSTER_DNS", value_delimiter = ' ', value_parser = parse_dns)]
    pub dns: Vec<IpAddr>,

    /// Print the exact rules and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Applies (or prints) the rules for IPv4 and IPv6.
pub fn run(args: &InitNetworkArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let rules = EgressRules {
        gateway_uid: args.gateway_uid,
        allowed: args.allow.clone(),
        dns: args.dns.clone(),
    };
    for family in [IpFamily::V4, IpFamily::V6] {
        if args.dry_run {
            writeln!(out, "# {}", family.restore_tool())?;
            write!(out, "{}", rules.render(family, true))?;
            continue;
        }
        let saved = capture(family.save_tool(), &["-t", "filter"])?;
        let text = rules.render(family, !has_jump(&saved));
        restore(family.restore_tool(), &text)?;
    }
    if !args.dry_run {
        writeln!(out, "init-network: applied: {}", rules.summary())?;
    }
    Ok(())
}

fn capture(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !output.status.success() {
        bail!(
            "{tool} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{tool} printed non-UTF-8 output"))
}

fn restore(tool: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new(tool)
        .args(["--noflush", "--wait", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} (the image needs iptables)"))?;
    child
        .stdin
        .take()
        .context("no stdin for the restore tool")?
        .write_all(rules.as_bytes())
        .with_context(|| format!("writing rules to {tool}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool}"))?;
    if !output.status.success() {
        bail!(
            "{tool} refused the rules ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
