//! A Subnet's DHCPv4 server as the datapath answers with it: the lease time and the options
//! every answer carries, encoded once when the snapshot is compiled, so answering a client
//! copies bytes and allocates nothing.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// DHCP option codes (RFC 2132, RFC 3397, RFC 3442).
pub mod code {
    /// Interface MTU.
    pub const MTU: u8 = 26;
    /// Broadcast address.
    pub const BROADCAST: u8 = 28;
    /// Domain name.
    pub const DOMAIN_NAME: u8 = 15;
    /// Renewal (T1) time.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding (T2) time.
    pub const REBINDING_TIME: u8 = 59;
    /// Domain search list.
    pub const DOMAIN_SEARCH: u8 = 119;
    /// Classless static routes.
    pub const CLASSLESS_ROUTES: u8 = 121;
}

/// Most options [`DhcpServer::extra`] holds (the stage builds them on its stack, with the
/// port's MTU).
pub const MAX_EXTRA_OPTIONS: usize = 6;

/// One option, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedOption {
    /// The option code.
    pub code: u8,
    /// Its value (at most 255 bytes).
    pub value: Box<[u8]>,
}

/// What a Subnet's DHCP server answers with besides the client's own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpServer {
    /// The lease time (option 51), in seconds.
    pub lease_seconds: u32,
    /// IPv4 nameservers (option 6), at most three.
    pub dns: Vec<Ipv4Addr>,
    /// Options beyond those smoltcp's `DhcpRepr` writes: broadcast address, domain name and
    /// search list, classless routes, T1 and T2 (the MTU is the port's, added per answer).
    pub extra: Vec<EncodedOption>,
}

/// The settings a [`DhcpServer`] is built from.
#[derive(Debug, Clone)]
pub struct DhcpSettings<'a> {
    /// Lease time in seconds.
    pub lease_seconds: u32,
    /// The Subnet's prefix.
    pub cidr: Ipv4Net,
    /// The gateway (the default route's router).
    pub gateway: Ipv4Addr,
    /// IPv4 nameservers.
    pub dns: &'a [Ipv4Addr],
    /// Search domains; the first is also the domain name.
    pub search: &'a [String],
    /// Classless routes besides the default one: destination and router.
    pub routes: &'a [(Ipv4Net, Ipv4Addr)],
}

impl DhcpServer {
    /// Encodes `settings` once.
    pub fn new(settings: &DhcpSettings<'_>) -> DhcpServer {
        let mut extra = Vec::with_capacity(MAX_EXTRA_OPTIONS);
        let mut push = |code: u8, value: Vec<u8>| {
            if !value.is_empty() && value.len() <= 255 {
                extra.push(EncodedOption {
                    code,
                    value: value.into_boxed_slice(),
                });
            }
        };
        push(code::BROADCAST, settings.cidr.broadcast().octets().to_vec());
        if let Some(first) = settings.search.first() {
            push(
                code::DOMAIN_NAME,
                first.trim_end_matches('.').as_bytes().to_vec(),
            );
        }
        push(code::DOMAIN_SEARCH, encode_search(settings.search));
        if !settings.routes.is_empty() {
            push(
                code::CLASSLESS_ROUTES,
                encode_classless_routes(settings.gateway, settings.routes),
            );
        }
        let lease = settings.lease_seconds;
        push(code::RENEWAL_TIME, (lease / 2).to_be_bytes().to_vec());
        let rebinding = u32::try_from(u64::from(lease) * 7 / 8).unwrap_or(u32::MAX);
        push(code::REBINDING_TIME, rebinding.to_be_bytes().to_vec());
        debug_assert!(extra.len() <= MAX_EXTRA_OPTIONS);
        DhcpServer {
            lease_seconds: lease,
            dns: settings.dns.iter().copied().take(3).collect(),
            extra,
        }
    }
}

/// Option 119 (RFC 3397): the domains in DNS wire format, uncompressed, as many as fit the
/// option's 255 bytes.
pub fn encode_search(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for domain in domains {
        let mut name = Vec::new();
        for label in domain.trim_end_matches('.').split('.') {
            let Ok(len) = u8::try_from(label.len()) else {
                continue;
            };
            if len == 0 || len > 63 {
                continue;
            }
            name.push(len);
            name.extend_from_slice(label.as_bytes());
        }
        name.push(0);
        if out.len() + name.len() > 255 {
            break;
        }
        out.extend_from_slice(&name);
    }
    out
}

/// Option 121 (RFC 3442): each route as its prefix length, the significant octets of its
/// destination and its router; the default route via `gateway` last, since a client that
/// takes this option ignores the router option.
pub fn encode_classless_routes(gateway: Ipv4Addr, routes: &[(Ipv4Net, Ipv4Addr)]) -> Vec<u8> {
    let mut out = Vec::new();
    let default = (Ipv4Net::default(), gateway);
    for (net, via) in routes.iter().chain(std::iter::once(&default)) {
        let len = net.prefix_len();
        let significant = usize::from(len.div_ceil(8));
        out.push(len);
        out.extend_from_slice(&net.network().octets()[..significant]);
        out.extend_from_slice(&via.octets());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_list_is_dns_wire_format() {
        let encoded = encode_search(&["eng.example.com".into(), "example.com.".into()]);
        assert_eq!(
            encoded,
            b"\x03eng\x07example\x03com\x00\x07example\x03com\x00".to_vec()
        );
        // Domains that would overflow the option are left out.
        let long: Vec<String> = (0..10)
            .map(|i| format!("{}{i}.example", "a".repeat(40)))
            .collect();
        assert!(encode_search(&long).len() <= 255);
    }

    #[test]
    fn classless_routes_follow_rfc_3442() {
        let gateway = Ipv4Addr::new(10, 1, 0, 1);
        let routes = [(
            "10.200.0.0/16".parse().unwrap(),
            Ipv4Addr::new(10, 1, 0, 254),
        )];
        // The examples of RFC 3442 section 1: 16 significant bits take 2 octets; the
        // default route none.
        assert_eq!(
            encode_classless_routes(gateway, &routes),
            vec![16, 10, 200, 10, 1, 0, 254, 0, 10, 1, 0, 1]
        );
        let odd = [("10.17.0.0/17".parse().unwrap(), Ipv4Addr::new(10, 1, 0, 2))];
        assert_eq!(
            &encode_classless_routes(gateway, &odd)[..8],
            &[17, 10, 17, 0, 10, 1, 0, 2]
        );
    }

    #[test]
    fn server_encodes_its_options_once() {
        let server = DhcpServer::new(&DhcpSettings {
            lease_seconds: 600,
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            dns: &[Ipv4Addr::new(10, 0, 0, 53)],
            search: &["svc.example".into()],
            routes: &[],
        });
        let find = |c: u8| server.extra.iter().find(|o| o.code == c).map(|o| &*o.value);
        assert_eq!(find(code::BROADCAST), Some(&[10, 1, 0, 255][..]));
        assert_eq!(find(code::DOMAIN_NAME), Some(&b"svc.example"[..]));
        assert_eq!(find(code::RENEWAL_TIME), Some(&300u32.to_be_bytes()[..]));
        assert_eq!(find(code::REBINDING_TIME), Some(&525u32.to_be_bytes()[..]));
        // No routes beyond the default: the router option says it all.
        assert_eq!(find(code::CLASSLESS_ROUTES), None);
        assert_eq!(server.dns, vec![Ipv4Addr::new(10, 0, 0, 53)]);
    }
}
