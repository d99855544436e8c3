//! The pure core of `init-network`: typed inputs (UID, CIDRs, ports, resolvers)
//! and the `iptables-restore` text they render to.
//!
//! Every input is parsed into a typed value first, and the rules text is built
//! only from those values' own `Display`, never from an input string, so no
//! argument can smuggle an option or a rule into `iptables-restore`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The chain Tollgate owns in the `filter` table. Re-running flushes and refills
/// it; `OUTPUT` jumps to it once.
pub const CHAIN: &str = "TOLLGATE_OUTPUT";

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("gateway UID {0:?}: expected a number from 1 to 4294967294 (not root)")]
    Uid(String),
    #[error("CIDR {0:?}: expected an IPv4 or IPv6 network such as 10.96.0.0/12 or fd00::/8")]
    Cidr(String),
    #[error("CIDR {given:?} has host bits set; did you mean {canonical}?")]
    CidrHostBits { given: String, canonical: String },
    #[error("port {0:?}: expected a number from 1 to 65535")]
    Port(String),
    #[error(
        "allowed destination {0:?}: expected CIDR or CIDR=PORT[,PORT...], for example 10.96.0.0/12=443,5432"
    )]
    Destination(String),
    #[error("DNS server {0:?}: expected an IPv4 or IPv6 address")]
    Dns(String),
}

/// The gateway's UID: the only one whose traffic may leave freely. Never root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayUid(u32);

impl GatewayUid {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl FromStr for GatewayUid {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u32>() {
            Ok(uid) if uid != 0 && uid != u32::MAX && s.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Self(uid))
            }
            _ => Err(InputError::Uid(s.to_string())),
        }
    }
}

impl fmt::Display for GatewayUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An IP network with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.network)
    }
}

fn mask_host_bits(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InputError::Cidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        let canonical = mask_host_bits(network, prefix);
        if canonical != network {
            return Err(InputError::CidrHostBits {
                given: s.to_string(),
                canonical: format!("{canonical}/{prefix}"),
            });
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A TCP or UDP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(u16);

impl FromStr for Port {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<u16>() {
            Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Self(p)),
            _ => Err(InputError::Port(s.to_string())),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A non-LLM destination app containers may still reach: a network, and
/// optionally the only ports allowed on it (TCP and UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDestination {
    pub cidr: Cidr,
    pub ports: Vec<Port>,
}

/// `iptables -m multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

impl FromStr for AllowedDestination {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (cidr, ports) = match s.split_once('=') {
            Some((cidr, ports)) => (cidr, Some(ports)),
            None => (s, None),
        };
        let cidr: Cidr = cidr.parse()?;
        let mut ports = match ports {
            None => Vec::new(),
            Some("") => return Err(InputError::Destination(s.to_string())),
            Some(list) => list
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<Port>, _>>()?,
        };
        ports.sort();
        ports.dedup();
        Ok(Self { cidr, ports })
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
    /// The name of the restore tool for this family.
    pub fn restore_tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
    /// The name of the save tool for this family.
    pub fn save_tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }
    fn udp_reject(self) -> &'static str {
        match self {
            Self::V4 => "icmp-port-unreachable",
            Self::V6 => "icmp6-port-unreachable",
        }
    }
}

/// A cluster DNS resolver, parsed.
pub fn parse_dns(s: &str) -> Result<IpAddr, InputError> {
    s.parse().map_err(|_| InputError::Dns(s.to_string()))
}

/// Everything `init-network` needs, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRules {
    pub gateway_uid: GatewayUid,
    pub allowed: Vec<AllowedDestination>,
    pub dns: Vec<IpAddr>,
}

/// The line that hooks our chain into `OUTPUT`, as `iptables-save` prints it.
pub fn jump_line() -> String {
    format!("-A OUTPUT -j {CHAIN}")
}

/// Whether `iptables-save` output already has the jump into our chain.
pub fn has_jump(saved: &str) -> bool {
    let jump = jump_line();
    saved.lines().any(|l| l.trim_end() == jump)
}

impl EgressRules {
    /// Renders the `iptables-restore --noflush` input for one family. Declaring
    /// the chain flushes it, so running twice leaves one copy of the rules; the
    /// jump from `OUTPUT` is added only when `add_jump` (it is not there yet).
    pub fn render(&self, family: IpFamily, add_jump: bool) -> String {
        let mut lines = vec!["*filter".to_string(), format!(":{CHAIN} - [0:0]")];
        let mut rule = |spec: String| lines.push(format!("-A {CHAIN} {spec}"));
        rule("-o lo -j RETURN".into());
        rule(format!(
            "-m owner --uid-owner {} -j RETURN",
            self.gateway_uid
        ));
        // Replies on connections that were allowed when they opened (inbound
        // connections to the pod's own servers, mostly).
        rule("-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN".into());
        if family == IpFamily::V6 {
            // The kernel's own neighbour discovery has no owning socket; without
            // it no IPv6 traffic flows at all, the gateway's included.
            for t in [
                "neighbour-solicitation",
                "neighbour-advertisement",
                "router-solicitation",
            ] {
                rule(format!("-p ipv6-icmp --icmpv6-type {t} -j RETURN"));
            }
        }
        for dns in self.dns.iter().filter(|d| IpFamily::of(d) == family) {
            for proto in ["udp", "tcp"] {
                rule(format!("-d {dns} -p {proto} --dport 53 -j RETURN"));
            }
        }
        // DNS goes only to the cluster resolvers, even inside an allowed CIDR.
        rule("-p udp --dport 53 -j REJECT --reject-with ".to_string() + family.udp_reject());
        rule("-p tcp --dport 53 -j REJECT --reject-with tcp-reset".into());
        for dest in self.allowed.iter().filter(|d| d.cidr.family() == family) {
            if dest.ports.is_empty() {
                rule(format!("-d {} -j RETURN", dest.cidr));
                continue;
            }
            for chunk in dest.ports.chunks(MULTIPORT_MAX) {
                let ports: Vec<String> = chunk.iter().map(Port::to_string).collect();
                for proto in ["tcp", "udp"] {
                    rule(format!(
                        "-d {} -p {proto} -m multiport --dports {} -j RETURN",
                        dest.cidr,
                        ports.join(",")
                    ));
                }
            }
        }
        rule("-p tcp -j REJECT --reject-with tcp-reset".into());
        rule("-p udp -j REJECT --reject-with ".to_string() + family.udp_reject());
        // ICMP and every other protocol: dropped (an ICMP error in reply to ICMP
        // is not allowed, so REJECT cannot answer it).
        rule("-j DROP".into());
        if add_jump {
            lines.push(format!("-I OUTPUT 1 -j {CHAIN}"));
        }
        lines.push("COMMIT".into());
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// A one-line description of what the rules allow, for logs.
    pub fn summary(&self) -> String {
        let allowed: Vec<String> = self
            .allowed
            .iter()
            .map(|d| {
                if d.ports.is_empty() {
                    d.cidr.to_string()
                } else {
                    let ports: Vec<String> = d.ports.iter().map(Port::to_string).collect();
                    format!("{} ports {}", d.cidr, ports.join(","))
                }
            })
            .collect();
        let dns: Vec<String> = self.dns.iter().map(IpAddr::to_string).collect();
        format!(
            "only UID {} may leave the pod; others reach loopback, DNS at [{}], and [{}]; all other TCP, UDP and ICMP is refused (IPv4 and IPv6)",
            self.gateway_uid,
            dns.join(", "),
            allowed.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> EgressRules {
        EgressRules {
            gateway_uid: "15080".parse().unwrap(),
            allowed: vec![
                "10.96.0.0/12=443,5432".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            dns: vec![
                parse_dns("10.96.0.10").unwrap(),
                parse_dns("fd00::a").unwrap(),
            ],
        }
    }

    #[test]
    fn renders_exact_ipv4_rules() {
        let expected = "\
*filter
:TOLLGATE_OUTPUT - [0:0]
-A TOLLGATE_OUTPUT -o lo -j RETURN
-A TOLLGATE_OUTPUT -m owner --uid-owner 15080 -j RETURN
-A TOLLGATE_OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A TOLLGATE_OUTPUT -d 10.96.0.10 -p udp --dport 53 -j RETURN
-A TOLLGATE_OUTPUT -d 10.96.0.10 -p tcp --dport 53 -j RETURN
-A TOLLGATE_OUTPUT -p udp --dport 53 -j REJECT --reject-with icmp-port-unreachable
-A TOLLGATE_OUTPUT -p tcp --dport 53 -j REJECT --reject-with tcp-reset
-A TOLLGATE_OUTPUT -d 10.96.0.0/12 -p tcp -m multiport --dports 443,5432 -j RETURN
-A TOLLGATE_OUTPUT -d 10.96.0.0/12 -p udp -m multiport --dports 443,5432 -j RETURN
-A TOLLGATE_OUTPUT -p tcp -j REJECT --reject-with tcp-reset
-A TOLLGATE_OUTPUT -p udp -j REJECT --reject-with icmp-port-unreachable
-A TOLLGATE_OUTPUT -j DROP
-I OUTPUT 1 -j TOLLGATE_OUTPUT
COMMIT
";
        assert_eq!(rules().render(IpFamily::V4, true), expected);
    }

    #[test]
    fn ipv6_rules_keep_neighbour_discovery_and_use_v6_addresses_only() {
        let text = rules().render(IpFamily::V6, false);
        assert!(text.contains(
            "-A TOLLGATE_OUTPUT -p ipv6-icmp --icmpv6-type neighbour-solicitation -j RETURN"
        ));
        assert!(text.contains("-A TOLLGATE_OUTPUT -d fd00::a -p udp --dport 53 -j RETURN"));
        assert!(text.contains("-A TOLLGATE_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(text.contains("icmp6-port-unreachable"));
        assert!(
            !text.contains("10.96."),
            "IPv4 addresses leaked into ip6tables rules:\n{text}"
        );
        assert!(
            !text.contains("-I OUTPUT"),
            "the jump is added only when missing"
        );
    }

    #[test]
    fn jump_detection_matches_iptables_save_output() {
        let saved = "*filter\n:OUTPUT ACCEPT [0:0]\n:TOLLGATE_OUTPUT - [0:0]\n-A OUTPUT -j TOLLGATE_OUTPUT\nCOMMIT\n";
        assert!(has_jump(saved));
        assert!(!has_jump("*filter\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"));
        assert!(!has_jump("-A OUTPUT -j TOLLGATE_OUTPUT_OTHER\n"));
    }

    #[test]
    fn many_ports_are_split_for_multiport() {
        let ports: Vec<String> = (1..=20).map(|p| p.to_string()).collect();
        let dest: AllowedDestination = format!("10.0.0.0/8={}", ports.join(",")).parse().unwrap();
        let r = EgressRules {
            gateway_uid: GatewayUid(7),
            allowed: vec![dest],
            dns: vec![],
        };
        let text = r.render(IpFamily::V4, false);
        assert_eq!(
            text.matches("-m multiport").count(),
            4,
            "two chunks, TCP and UDP each:\n{text}"
        );
    }

    #[test]
    fn refuses_bad_input_with_clear_messages() {
        assert_eq!(
            "0".parse::<GatewayUid>().unwrap_err().to_string(),
            "gateway UID \"0\": expected a number from 1 to 4294967294 (not root)"
        );
        assert!("+5".parse::<GatewayUid>().is_err());
        assert!("1337 -j ACCEPT".parse::<GatewayUid>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/8 -j ACCEPT".parse::<Cidr>().is_err());
        assert!("eth0".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string(),
            "CIDR \"10.1.2.3/8\" has host bits set; did you mean 10.0.0.0/8?"
        );
        assert!("0".parse::<Port>().is_err());
        assert!("65536".parse::<Port>().is_err());
        assert!("10.0.0.0/8=".parse::<AllowedDestination>().is_err());
        assert!("10.0.0.0/8=80,x".parse::<AllowedDestination>().is_err());
        assert!(parse_dns("10.0.0.10; rm -rf /").is_err());
    }

    #[test]
    fn canonical_cidrs_round_trip() {
        for s in [
            "0.0.0.0/0",
            "10.96.0.0/12",
            "192.0.2.7/32",
            "::/0",
            "fd00::/8",
            "2001:db8::1/128",
        ] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
    }

    proptest! {
        /// Whatever string is offered, the rendered rules contain only text the
        /// typed values produce: no input survives into the rules unparsed.
        #[test]
        fn no_input_string_reaches_the_rules(cidr in ".{0,40}", port in ".{0,8}", uid in ".{0,12}") {
            let dest = format!("{cidr}={port}");
            if let (Ok(d), Ok(u)) = (dest.parse::<AllowedDestination>(), uid.parse::<GatewayUid>()) {
                let text = EgressRules { gateway_uid: u, allowed: vec![d.clone()], dns: vec![] }.render(d.cidr.family(), true);
                for line in text.lines() {
                    prop_assert!(line.bytes().all(|b| b.is_ascii_alphanumeric() || b" -:/.,[]*_".contains(&b)), "unexpected byte in {line:?}");
                }
            }
        }

        #[test]
        fn valid_v4_networks_parse(a in any::<u32>(), prefix in 0u8..=32) {
            let net = mask_host_bits(IpAddr::V4(a.into()), prefix);
            let s = format!("{net}/{prefix}");
            prop_assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
    }
}
