//! Counter keys: the stable `stage.reason` keys the datapath counts under, and the events
//! the stages tally.
//!
//! `keyed_enum!` declares an enum whose variants each carry a stable key and a one-line
//! description, with a dense index for counter arrays: the pipeline's drop reasons and the
//! switch-wide [`Event`]s are declared with it. Stages count events in an [`EventTally`], one
//! per worker, which the worker adds to its counters once per batch (the counters themselves,
//! per port and per drop cause, belong to the runtime).

/// Declares a `Copy` enum whose variants each carry a stable key and a one-line description,
/// with `ALL`, `COUNT`, `key()`, `description()` and a dense `index()` for counter arrays.
macro_rules! keyed_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $variant:ident = $key:literal : $desc:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( #[doc = $desc] $variant, )+
        }

        impl $name {
            /// Every value, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Number of values.
            pub const COUNT: usize = Self::ALL.len();

            /// The stable key (`stage.reason`) used by counters and the API.
            pub const fn key(self) -> &'static str {
                match self {
                    $( $name::$variant => $key, )+
                }
            }

            /// One line saying what happened.
            pub const fn description(self) -> &'static str {
                match self {
                    $( $name::$variant => $desc, )+
                }
            }

            /// Dense index (`0..COUNT`), for counter arrays.
            pub const fn index(self) -> usize {
                self as usize
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.key())
            }
        }
    };
}
pub(crate) use keyed_enum;

keyed_enum! {
    /// Things worth counting that are not drops.
    pub enum Event {
        MacLearned = "l2.mac_learned":
            "a new MAC was learned",
        MacMoved = "l2.mac_moved":
            "a learned MAC appeared on another port",
        MacLimitReached = "l2.mac_limit_reached":
            "a MAC was not learned because its subnet's table is full",
        MacAged = "l2.mac_aged":
            "learned MACs removed by the ageing sweep",
        RxError = "rx.error":
            "reading a port's queue failed",
        BondMemberUp = "bond.member_up":
            "a bond member started carrying traffic (carrier, ARP probes answered, LACP aggregated)",
        BondMemberDown = "bond.member_down":
            "a bond member stopped carrying traffic",
        BondFailover = "bond.failover":
            "the set of bond members carrying traffic, or the active one, changed",
        BondGratuitousArpSent = "bond.gratuitous_arp_sent":
            "gratuitous ARPs sent on a bond's new active member for the switch's uplink addresses and VLAN gateways",
        BondUnsolicitedNaSent = "bond.unsolicited_na_sent":
            "unsolicited neighbour advertisements sent on a bond's new active member for the switch's uplink IPv6 addresses and VLAN IPv6 gateways",
        BondArpProbeSent = "bond.arp_probe_sent":
            "ARP probes sent by a bond's ARP monitor",
        LacpPduReceived = "bond.lacp_pdu_rx":
            "LACPDUs received on bond members",
        LacpPduSent = "bond.lacp_pdu_tx":
            "LACPDUs sent on bond members",
        LacpPduBad = "bond.lacp_pdu_bad":
            "malformed Slow Protocols frames received on bond members (and markers, which are not answered)",
        LacpExpired = "bond.lacp_expired":
            "a LACP partner stopped sending PDUs for three periods (expired)",
        LacpDefaulted = "bond.lacp_defaulted":
            "a LACP partner stayed silent after expiring (defaulted: the member leaves the aggregate)",
        RxBackoff = "rx.backoff":
            "a port's queue was left unread for a while: it sent frames fast and nearly all were dropped (the kernel drops what overflows meanwhile, at the sender)",
        FlushError = "tx.flush_error":
            "pushing out a port's queued frames failed",
        ChecksumCompleted = "tx.checksum_completed":
            "a partial checksum was completed for a port that cannot take one",
        Routed = "l3.routed":
            "a packet was routed (TTL decremented, MACs rewritten)",
        Fragmented = "l3.fragmented":
            "a routed packet was fragmented to fit the egress subnet's MTU",
        GsoResized = "l3.gso_resized":
            "a TCP GSO frame without DF got a smaller segment size to fit the egress MTU",
        IcmpSent = "l3.icmp_sent":
            "an ICMP error was sent (time exceeded, unreachable, fragmentation needed)",
        IcmpRateLimited = "l3.icmp_rate_limited":
            "an ICMP error was not sent: over the per-worker rate limit",
        EchoReplied = "l3.echo_replied":
            "an ICMP echo request to a gateway address (or an uplink address) was answered",
        ArpReplied = "l3.arp_replied":
            "an ARP request for a gateway address (or an uplink address) was answered",
        NeighborAdvertised = "l3.nd_advertised":
            "neighbour solicitations for a gateway's IPv6 address answered",
        RouterAdvertised = "l3.ra_sent":
            "router advertisements sent (answers to router solicitations)",
        NeighborSolicitationsSent = "l3.nd_solicitations_sent":
            "neighbour solicitations sent to resolve an IPv6 next hop",
        ArpRequestsSent = "l3.arp_requests_sent":
            "an ARP request was sent to resolve (or re-confirm) a next hop",
        GratuitousArpSent = "l3.gratuitous_arp_sent":
            "a gratuitous ARP announced the subnet gateway to a newly attached port",
        NeighborLearned = "l3.neighbor_learned":
            "a neighbour's MAC was learned or changed",
        NeighborAged = "l3.neighbor_aged":
            "neighbour entries removed by the sweep (aged, failed, or their subnet left)",
        Held = "l3.held":
            "a packet was held while ARP resolves its next hop",
        HeldReleased = "l3.held_released":
            "a held packet was sent once its next hop answered",
        NatTranslated = "nat.translated":
            "a packet's addresses, ports or echo identifier were rewritten by NAT",
        NatConnectionCreated = "nat.connections_created":
            "a connection crossing NAT (masquerade, port forward, virtual IP, hairpin) was created in conntrack",
        LbConnection = "lb.connections_created":
            "a connection to a LoadBalancer was given its backend and created in conntrack",
        LbProbeAnswered = "lb.probe_answers":
            "a backend answered a LoadBalancer health probe (SYN-ACK: up, reset: down)",
        DhcpOffered = "dhcp.offers":
            "a DHCPDISCOVER was answered with a DHCPOFFER of the port's address",
        DhcpAcked = "dhcp.acks":
            "a DHCPREQUEST (or DHCPINFORM) was acknowledged: a lease granted or renewed",
        DhcpNaked = "dhcp.naks":
            "a DHCPREQUEST for an address that is not the port's was refused (DHCPNAK)",
        DhcpReleased = "dhcp.releases":
            "a client released its lease (the address stays the interface's)",
        DhcpDeclined = "dhcp.declines":
            "a client declined its address (it found it in use)",
    }
}

/// Events counted by the stages of one worker during a batch, added to the worker's counters
/// at the end of the batch (see [`drain`](EventTally::drain)).
#[derive(Debug, Clone)]
pub struct EventTally {
    counts: [u64; Event::COUNT],
    any: bool,
}

impl Default for EventTally {
    fn default() -> EventTally {
        EventTally::new()
    }
}

impl EventTally {
    /// All zero.
    pub const fn new() -> EventTally {
        EventTally {
            counts: [0; Event::COUNT],
            any: false,
        }
    }

    /// Counts one `event`.
    #[inline]
    pub fn add(&mut self, event: Event) {
        self.counts[event.index()] += 1;
        self.any = true;
    }

    /// The count of `event` so far.
    pub fn get(&self, event: Event) -> u64 {
        self.counts[event.index()]
    }

    /// Hands every non-zero tally to `add` (the worker adds them to its counters) and zeroes
    /// them.
    #[inline]
    pub fn drain(&mut self, mut add: impl FnMut(Event, u64)) {
        if !std::mem::take(&mut self.any) {
            return;
        }
        for (index, count) in self.counts.iter_mut().enumerate() {
            if *count > 0 {
                add(Event::ALL[index], std::mem::take(count));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_drains_once_and_resets() {
        let mut tally = EventTally::new();
        tally.add(Event::Routed);
        tally.add(Event::Routed);
        tally.add(Event::IcmpSent);
        assert_eq!(tally.get(Event::Routed), 2);
        let mut drained = Vec::new();
        tally.drain(|event, n| drained.push((event, n)));
        tally.drain(|event, n| drained.push((event, n)));
        assert_eq!(drained, [(Event::Routed, 2), (Event::IcmpSent, 1)]);
        assert_eq!(tally.get(Event::Routed), 0);
    }

    #[test]
    fn event_keys_are_unique() {
        let mut keys: Vec<&str> = Event::ALL.iter().map(|e| e.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Event::COUNT);
    }
}
