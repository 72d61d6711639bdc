//! The bond monitor: one thread per bonded uplink that decides which members carry traffic
//! and publishes it to the workers ([`Bond`]).
//!
//! It watches, per member:
//! - the carrier, from the kernel's link notifications (`RTNLGRP_LINK`, `IFF_LOWER_UP`), as
//!   Open vSwitch's netdev-linux and the bonding driver's `use_carrier` do; a dump every few
//!   seconds makes up for a notification lost to a full socket;
//! - in `802.3ad`, LACP ([`super::lacp`]): its own AF_PACKET socket bound to the Slow
//!   Protocols EtherType (the datapath's sockets never see LACPDUs: their filter keeps only
//!   frames for the switch's MAC), joined to the LACP group address (a NIC filters it
//!   otherwise, as Linux's bonding `bond_open` knows);
//! - optionally, ARP probes (`arpMonitor`): requests to the targets each interval, on every
//!   member in balance-xor, on the active one in active-backup (and every fourth round on
//!   the members whose probes failed, so one whose path came back can prove it); a member
//!   that carries traffic and has received nothing for three intervals is down (Linux's
//!   `arp_interval` with `arp_missed_max` 2) until a frame arrives on it again. The workers
//!   note when they last read a frame from each member ([`Bond::note_rx`]).
//!
//! In active-backup the active member is the `primary` when it is up, else the current one
//! while it stays up, else the first member up (Open vSwitch's `bond_choose_member`). When
//! it changes, the new one announces the switch's addresses: a gratuitous ARP (an ARP
//! request with sender and target both the address, broadcast) for each uplink address and,
//! tagged, for each VLAN Subnet's gateway, and an unsolicited neighbour advertisement
//! (RFC 4861 section 7.2.6: to all nodes, override set) for each IPv6 one (the uplink's
//! `ipv6` addresses and its link-local address; VLAN Subnets' IPv6 gateways and their
//! link-local addresses, as routers), as Linux's bonding does through `NETDEV_NOTIFY_PEERS`
//! (`ndisc_send_unsol_na`), so the neighbours' switches move the MACs to the new link at
//! once.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::lacp::{self, ActorConfig, LacpEvent, PortInfo};
use crate::sys::link::{LinkWatch, SlowSocket};
use crate::tables::bond::{Bond, BondMode};
use crate::tables::clock::Clock;
use crate::tables::counters::Event;

/// The longest the monitor sleeps: how soon it notices it should stop.
const TICK_MS: u64 = 100;

/// How often the link states are dumped again (notifications can be lost).
const DUMP_MS: u64 = 5_000;

/// Missed ARP intervals after which a member that carries traffic is down.
const ARP_MISSED_MAX: u64 = 2;

/// How long an 802.3ad member must stay aggregated before it carries traffic (Linux's
/// `updelay`): the partner enables its end only once our LACPDU saying so arrives (Open
/// vSwitch: `may_enable`), and a flow moved back before that loses its next frames. The other
/// modes follow the carrier at once, as their peers do (a delay there would disagree with a
/// peer that moves back to its primary at once). Going down is immediate.
const UP_DELAY_MS: u64 = 300;

/// One member of the bond.
#[derive(Debug, Clone)]
pub struct MemberPort {
    /// The host interface.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// Its own MAC: the source of its LACPDUs (802.1AX wants the port's address there).
    pub mac: [u8; 6],
}

/// LACP as the Uplink asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LacpSettings {
    /// Ask the partner for a PDU every second and time out after three (else 30 s and 90 s).
    pub fast: bool,
    /// Send PDUs unprompted (active) or only in answer (passive).
    pub active: bool,
    /// The system priority (lower wins the aggregation choice).
    pub system_priority: u16,
}

/// ARP probes that prove a member works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpProbes {
    /// How often each target is asked on each member, ms.
    pub interval_ms: u64,
    /// The addresses asked.
    pub targets: Vec<Ipv4Addr>,
}

/// What the monitor is given.
#[derive(Debug, Clone)]
pub struct BondConfig {
    /// The Uplink's name (for logs).
    pub uplink: String,
    /// The members, in the Uplink's order.
    pub members: Vec<MemberPort>,
    /// The member active-backup prefers.
    pub primary: Option<usize>,
    /// The switch's MAC on the uplink: the LACP system id, and the source of its ARP.
    pub switch_mac: [u8; 6],
    /// LACP settings (`802.3ad` only).
    pub lacp: LacpSettings,
    /// ARP probes, when asked for.
    pub arp: Option<ArpProbes>,
    /// Gratuitous ARPs (unsolicited NAs for IPv6) sent for each address when the active
    /// member changes.
    pub peer_notifications: u8,
    /// The protocol identifier of the VLAN tags (the announcements of VLAN gateways).
    pub tpid: u16,
}

/// What a failover announces, kept current by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcements {
    /// The switch's uplink addresses (untagged, from the switch's MAC); the first is the
    /// source of ARP probes.
    pub addresses: Vec<Ipv4Addr>,
    /// VLAN Subnets' gateways: VLAN, address, the gateway's MAC.
    pub gateways: Vec<(u16, Ipv4Addr, [u8; 6])>,
    /// The switch's uplink IPv6 addresses (untagged, from the switch's MAC), its link-local
    /// one among them.
    pub addresses6: Vec<Ipv6Addr>,
    /// VLAN Subnets' IPv6 gateways (global and link-local): VLAN, address, the gateway's MAC.
    pub gateways6: Vec<(u16, Ipv6Addr, [u8; 6])>,
}

/// One member as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberReport {
    /// The host interface.
    pub ifname: String,
    /// The link has carrier.
    pub carrier: bool,
    /// ARP probes are answered (true without ARP probes).
    pub probes_answered: bool,
    /// Frames leave on it.
    pub carries: bool,
    /// The active member (active-backup).
    pub active: bool,
    /// LACP (`802.3ad` only).
    pub lacp: Option<LacpReport>,
}

/// A member's LACP state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LacpReport {
    /// `current`, `expired` or `defaulted`.
    pub rx_state: &'static str,
    /// Aggregated with the partner (selected).
    pub selected: bool,
    /// Our state bits.
    pub actor_state: u8,
    /// The partner as last heard.
    pub partner: PortInfo,
    /// PDUs received.
    pub pdus_rx: u64,
    /// PDUs sent.
    pub pdus_tx: u64,
    /// Malformed PDUs.
    pub bad_pdus: u64,
}

/// What the monitor shares with the controller.
#[derive(Debug, Default)]
pub struct MonitorShared {
    /// Each member's state, refreshed on every change.
    pub report: Mutex<Vec<MemberReport>>,
    /// What a failover announces.
    pub announce: Mutex<Announcements>,
    /// Changes of the active member (active-backup) or of the set of members carrying
    /// traffic.
    pub failovers: std::sync::atomic::AtomicU64,
}

/// Counts an event (the controller adds it to the datapath's counters).
pub type EventSink = Arc<dyn Fn(Event, u64) + Send + Sync>;

/// A running monitor; dropping it stops the thread (within [`TICK_MS`]).
pub struct BondMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The state it shares.
    pub shared: Arc<MonitorShared>,
}

impl std::fmt::Debug for BondMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BondMonitor")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl BondMonitor {
    /// Opens the monitor's sockets (in the caller's network namespace) and starts its
    /// thread.
    ///
    /// # Errors
    /// When a socket cannot be opened or the thread started.
    pub fn start(
        config: BondConfig,
        bond: Arc<Bond>,
        clock: Arc<dyn Clock>,
        events: EventSink,
        announce: Announcements,
    ) -> io::Result<BondMonitor> {
        let links = LinkWatch::open()?;
        let sockets = config
            .members
            .iter()
            .map(|member| SlowSocket::open(member.ifindex, lacp::LACP_MULTICAST))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(MonitorShared {
            announce: Mutex::new(announce),
            ..MonitorShared::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = Monitor::new(config, bond, clock, events, Arc::clone(&shared));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("vs-bond".into())
            .spawn(move || state.run(&links, &sockets, &stopping))?;
        Ok(BondMonitor {
            stop,
            thread: Some(thread),
            shared,
        })
    }
}

impl Drop for BondMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The monitor thread's state.
struct Monitor {
    config: BondConfig,
    bond: Arc<Bond>,
    clock: Arc<dyn Clock>,
    events: EventSink,
    shared: Arc<MonitorShared>,
    carrier: Vec<bool>,
    /// When each member last came up (ARP probes are given three intervals from there).
    up_since: Vec<u64>,
    /// Since when each member has been fit to carry traffic (`None`: it is not).
    fit_since: Vec<Option<u64>>,
    /// When each member's ARP probes were found unanswered (`None`: they are answered).
    arp_failed_at: Vec<Option<u64>>,
    probe_round: u64,
    lacp: Vec<lacp::Member>,
    carrying: Vec<bool>,
    active: Option<usize>,
    next_probe_ms: u64,
    next_dump_ms: u64,
    published: bool,
}

impl Monitor {
    fn new(
        config: BondConfig,
        bond: Arc<Bond>,
        clock: Arc<dyn Clock>,
        events: EventSink,
        shared: Arc<MonitorShared>,
    ) -> Monitor {
        let now = clock.now_ms();
        let lacp = config
            .members
            .iter()
            .enumerate()
            .map(|(index, _)| {
                lacp::Member::new(
                    ActorConfig {
                        system: config.switch_mac,
                        system_priority: config.lacp.system_priority,
                        key: 1,
                        port: u16::try_from(index + 1).unwrap_or(u16::MAX),
                        port_priority: 255,
                        fast: config.lacp.fast,
                        active: config.lacp.active,
                    },
                    now,
                )
            })
            .collect();
        let members = config.members.len();
        Monitor {
            config,
            bond,
            clock,
            events,
            shared,
            carrier: vec![false; members],
            up_since: vec![0; members],
            arp_failed_at: vec![None; members],
            fit_since: vec![None; members],
            probe_round: 0,
            lacp,
            carrying: vec![false; members],
            active: None,
            next_probe_ms: now,
            next_dump_ms: now,
            published: false,
        }
    }

    fn run(&mut self, links: &LinkWatch, sockets: &[SlowSocket], stop: &AtomicBool) {
        let mut buffer = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            let now = self.clock.now_ms();
            if now >= self.next_dump_ms {
                if let Err(error) = links.request_dump() {
                    tracing::warn!(uplink = %self.config.uplink, %error, "cannot ask for the bond members' link states");
                }
                self.next_dump_ms = now + DUMP_MS;
            }
            let timeout = self.next_deadline().saturating_sub(now).min(TICK_MS);
            let fds: Vec<i32> = std::iter::once(links.as_raw_fd())
                .chain(sockets.iter().map(AsRawFd::as_raw_fd))
                .collect();
            if let Err(error) = crate::sys::link::poll_readable(&fds, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    std::thread::sleep(Duration::from_millis(TICK_MS));
                }
            }
            let now = self.clock.now_ms();
            links.drain(&mut buffer, |ifindex, carrier| {
                self.set_carrier(ifindex, carrier, now);
            });
            for (index, socket) in sockets.iter().enumerate() {
                while let Some(len) = socket.recv(&mut buffer) {
                    self.receive(index, buffer.get(..len).unwrap_or_default(), now);
                }
            }
            self.timers(sockets, now);
            self.decide(sockets, now);
        }
        // Leave nothing carrying: the snapshot that drops this bond may still be read.
        self.bond.publish(&vec![false; self.carrying.len()], None);
    }

    fn is_lacp(&self) -> bool {
        self.bond.mode() == BondMode::Lacp
    }

    /// How long a member must stay fit before it carries traffic (see [`UP_DELAY_MS`]).
    fn up_delay(&self) -> u64 {
        if self.is_lacp() { UP_DELAY_MS } else { 0 }
    }

    fn next_deadline(&self) -> u64 {
        let lacp = if self.is_lacp() {
            self.lacp
                .iter()
                .map(lacp::Member::next_deadline)
                .min()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let probe = if self.config.arp.is_some() {
            self.next_probe_ms
        } else {
            u64::MAX
        };
        let up = self
            .fit_since
            .iter()
            .zip(&self.carrying)
            .filter(|(_, carrying)| !**carrying)
            .filter_map(|(since, _)| since.map(|since| since + self.up_delay()))
            .min()
            .unwrap_or(u64::MAX);
        lacp.min(probe).min(self.next_dump_ms).min(up)
    }

    fn set_carrier(&mut self, ifindex: u32, carrier: bool, now: u64) {
        let Some(index) = self
            .config
            .members
            .iter()
            .position(|m| m.ifindex == ifindex)
        else {
            return;
        };
        if self.carrier.get(index) == Some(&carrier) {
            return;
        }
        if let Some(slot) = self.carrier.get_mut(index) {
            *slot = carrier;
        }
        if carrier {
            if let Some(since) = self.up_since.get_mut(index) {
                *since = now;
            }
            // A link that comes back starts afresh, with the grace of three intervals.
            if let Some(failed) = self.arp_failed_at.get_mut(index) {
                *failed = None;
            }
        }
        let event = self
            .lacp
            .get_mut(index)
            .and_then(|member| member.set_carrier(carrier, now));
        self.count_lacp(event);
        tracing::info!(uplink = %self.config.uplink, member = %self.config.members.get(index).map_or("", |m| m.ifname.as_str()), carrier, "bond member link state");
    }

    fn receive(&mut self, index: usize, frame: &[u8], now: u64) {
        if !self.is_lacp() {
            return;
        }
        let Some(member) = self.lacp.get_mut(index) else {
            return;
        };
        // Only the Slow Protocols group address: the socket also hears unicast 0x8809 frames
        // (a member of a trunk is promiscuous), which no partner sends.
        if frame.get(..6) != Some(&lacp::LACP_MULTICAST[..]) {
            (self.events)(Event::LacpPduBad, 1);
            return;
        }
        let before = member.counters().pdus_rx;
        match member.receive(frame, now) {
            Ok(event) => {
                // Not counted: a PDU heard while the carrier is (still) down.
                if member.counters().pdus_rx > before {
                    (self.events)(Event::LacpPduReceived, 1);
                }
                self.count_lacp(event);
            }
            Err(lacp::PduError::NotSlowProtocol) => {}
            Err(_) => (self.events)(Event::LacpPduBad, 1),
        }
    }

    fn count_lacp(&self, event: Option<LacpEvent>) {
        match event {
            Some(LacpEvent::PartnerExpired) => (self.events)(Event::LacpExpired, 1),
            Some(LacpEvent::PartnerDefaulted) => (self.events)(Event::LacpDefaulted, 1),
            Some(LacpEvent::PartnerChanged) | None => {}
        }
    }

    /// LACP's timers and transmissions; ARP probes when due.
    fn timers(&mut self, sockets: &[SlowSocket], now: u64) {
        if self.is_lacp() {
            for index in 0..self.lacp.len() {
                let event = self.lacp.get_mut(index).and_then(|m| m.tick(now));
                self.count_lacp(event);
            }
            lacp::select(&mut self.lacp);
            for (index, member) in self.lacp.iter_mut().enumerate() {
                let Some(port) = self.config.members.get(index) else {
                    continue;
                };
                if let Some(pdu) = member.poll_transmit(now, port.mac) {
                    if let Some(socket) = sockets.get(index) {
                        if socket.send(&pdu).is_ok() {
                            (self.events)(Event::LacpPduSent, 1);
                        }
                    }
                }
            }
        }
        if let Some(arp) = &self.config.arp {
            if now >= self.next_probe_ms {
                self.next_probe_ms = now + arp.interval_ms.max(10);
                let source = self
                    .shared
                    .announce
                    .lock()
                    .addresses
                    .first()
                    .copied()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                self.probe_round = self.probe_round.wrapping_add(1);
                // Active-backup asks on the active member only (as Linux's bonding does): the
                // peer's switch learns the switch's MAC where a probe left, so replies to
                // probes from two members would all come back on one. Every fourth round
                // asks on the members whose probes failed instead, so that one whose path
                // came back can prove it (its reply, or any frame, arrives on it).
                let failed: Vec<usize> = (0..self.arp_failed_at.len())
                    .filter(|i| self.arp_failed_at.get(*i).is_some_and(Option::is_some))
                    .collect();
                let targets: Vec<usize> = match (self.bond.mode(), self.active) {
                    (BondMode::ActiveBackup, Some(_))
                        if !failed.is_empty() && self.probe_round % 4 == 0 =>
                    {
                        failed
                    }
                    (BondMode::ActiveBackup, Some(active)) => vec![active],
                    _ => (0..sockets.len()).collect(),
                };
                for (index, socket) in sockets.iter().enumerate() {
                    if !self.carrier.get(index).copied().unwrap_or(false)
                        || !targets.contains(&index)
                    {
                        continue;
                    }
                    for target in &arp.targets {
                        let probe = arp_frame(self.config.switch_mac, source, *target, None);
                        if socket.send(&probe).is_ok() {
                            (self.events)(Event::BondArpProbeSent, 1);
                        }
                    }
                }
            }
        }
    }

    /// Judges member `index` by its ARP probes (true without an ARP monitor). A member
    /// that carries traffic must have received a frame within three intervals (or have come
    /// up less than that ago); when it has not, it failed, and stays failed until a frame
    /// arrives on it after the failure. A backup in active-backup that has not failed is
    /// judged by its carrier (the partner answers on the active member only).
    fn judge_probes(&mut self, index: usize, now: u64) -> bool {
        let Some(arp) = &self.config.arp else {
            return true;
        };
        let last_rx = self.bond.last_rx_ms(index);
        if let Some(failed_at) = self.arp_failed_at.get(index).copied().flatten() {
            if last_rx <= failed_at {
                return false;
            }
            if let Some(slot) = self.arp_failed_at.get_mut(index) {
                *slot = None;
            }
            return true;
        }
        if self.bond.mode() == BondMode::ActiveBackup && self.active != Some(index) {
            return true;
        }
        let window = arp.interval_ms.max(10) * (ARP_MISSED_MAX + 1);
        let since = self.up_since.get(index).copied().unwrap_or(0);
        let answered = now.saturating_sub(since) < window || now.saturating_sub(last_rx) < window;
        if !answered {
            if let Some(slot) = self.arp_failed_at.get_mut(index) {
                *slot = Some(now);
            }
            tracing::info!(uplink = %self.config.uplink,
                member = %self.config.members.get(index).map_or("", |m| m.ifname.as_str()),
                "bond member's ARP probes went unanswered");
        }
        answered
    }

    /// What [`judge_probes`](Monitor::judge_probes) last concluded, for the status.
    fn probes_answered(&self, index: usize) -> bool {
        self.config.arp.is_none() || self.arp_failed_at.get(index).is_some_and(Option::is_none)
    }

    /// Works out which members carry traffic and the active one; publishes a change.
    fn decide(&mut self, sockets: &[SlowSocket], now: u64) {
        let members = self.config.members.len();
        let fit: Vec<bool> = (0..members)
            .map(|i| {
                let carrier = self.carrier.get(i).copied().unwrap_or(false);
                match self.bond.mode() {
                    BondMode::Lacp => self.lacp.get(i).is_some_and(lacp::Member::carries_traffic),
                    BondMode::ActiveBackup | BondMode::BalanceXor => {
                        carrier && self.judge_probes(i, now)
                    }
                }
            })
            .collect();
        // A member that carries keeps carrying while fit; one that does not starts after
        // it has been fit for UP_DELAY_MS.
        let up: Vec<bool> = fit
            .iter()
            .enumerate()
            .map(|(i, fit)| {
                let since = self.fit_since.get_mut(i);
                match (fit, since) {
                    (false, Some(since)) => {
                        *since = None;
                        false
                    }
                    (true, Some(since)) => {
                        let start = *since.get_or_insert(now);
                        self.carrying.get(i).copied().unwrap_or(false)
                            || now.saturating_sub(start) >= self.up_delay()
                    }
                    (_, None) => false,
                }
            })
            .collect();
        let active = if self.bond.mode() == BondMode::ActiveBackup {
            let is_up = |i: usize| up.get(i).copied().unwrap_or(false);
            self.config
                .primary
                .filter(|p| is_up(*p))
                .or(self.active.filter(|a| is_up(*a)))
                .or((0..members).find(|i| is_up(*i)))
        } else {
            None
        };
        let changed = up != self.carrying || active != self.active;
        if changed || !self.published {
            let before: Vec<bool> = self.carrying.clone();
            let before_active = self.active;
            self.carrying.clone_from(&up);
            self.active = active;
            self.bond.publish(&up, active);
            self.published = true;
            for (index, (was, is)) in before.iter().zip(&up).enumerate() {
                if was != is {
                    (self.events)(
                        if *is {
                            Event::BondMemberUp
                        } else {
                            Event::BondMemberDown
                        },
                        1,
                    );
                    tracing::info!(uplink = %self.config.uplink,
                        member = %self.config.members.get(index).map_or("", |m| m.ifname.as_str()),
                        carries = is, "bond member");
                }
            }
            if changed {
                self.shared
                    .failovers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (self.events)(Event::BondFailover, 1);
            }
            if active != before_active {
                // A new active member is judged by its probes from now on, with the grace
                // of three intervals (a backup's were not answered on it).
                if let Some(since) = active.and_then(|a| self.up_since.get_mut(a)) {
                    *since = now;
                }
                tracing::info!(uplink = %self.config.uplink,
                    active = %active.and_then(|a| self.config.members.get(a)).map_or("none", |m| m.ifname.as_str()),
                    "bond active member");
                if let Some(socket) = active.and_then(|a| sockets.get(a)) {
                    self.announce(socket);
                }
            }
        }
        self.report();
    }

    /// Gratuitous ARPs and unsolicited neighbour advertisements for the switch's addresses
    /// on the new active member.
    fn announce(&self, socket: &SlowSocket) {
        let announce = self.shared.announce.lock().clone();
        for _ in 0..self.config.peer_notifications {
            for address in &announce.addresses6 {
                let frame = unsolicited_na(self.config.switch_mac, *address, false, None);
                if socket.send(&frame).is_ok() {
                    (self.events)(Event::BondUnsolicitedNaSent, 1);
                }
            }
            for (vlan, address, mac) in &announce.gateways6 {
                let tag = Some((self.config.tpid, *vlan));
                let frame = unsolicited_na(*mac, *address, true, tag);
                if socket.send(&frame).is_ok() {
                    (self.events)(Event::BondUnsolicitedNaSent, 1);
                }
            }
            for address in &announce.addresses {
                let frame = arp_frame(self.config.switch_mac, *address, *address, None);
                if socket.send(&frame).is_ok() {
                    (self.events)(Event::BondGratuitousArpSent, 1);
                }
            }
            for (vlan, address, mac) in &announce.gateways {
                let frame = arp_frame(*mac, *address, *address, Some((self.config.tpid, *vlan)));
                if socket.send(&frame).is_ok() {
                    (self.events)(Event::BondGratuitousArpSent, 1);
                }
            }
        }
    }

    fn report(&self) {
        let report: Vec<MemberReport> = self
            .config
            .members
            .iter()
            .enumerate()
            .map(|(index, member)| MemberReport {
                ifname: member.ifname.clone(),
                carrier: self.carrier.get(index).copied().unwrap_or(false),
                probes_answered: self.probes_answered(index),
                carries: self.carrying.get(index).copied().unwrap_or(false),
                active: self.active == Some(index),
                lacp: self
                    .is_lacp()
                    .then(|| self.lacp.get(index))
                    .flatten()
                    .map(|m| {
                        let counters = m.counters();
                        LacpReport {
                            rx_state: m.rx_state().as_str(),
                            selected: m.selected(),
                            actor_state: m.actor().state,
                            partner: m.partner(),
                            pdus_rx: counters.pdus_rx,
                            pdus_tx: counters.pdus_tx,
                            bad_pdus: counters.bad_pdus,
                        }
                    }),
            })
            .collect();
        let mut shared = self.shared.report.lock();
        if *shared != report {
            *shared = report;
        }
    }
}

/// An unsolicited neighbour advertisement of `address` at `mac` (RFC 4861 section 7.2.6):
/// from the address to all nodes, solicited clear, override set, the router flag for a
/// gateway; tagged with `vlan` when given.
fn unsolicited_na(
    mac: [u8; 6],
    address: Ipv6Addr,
    router: bool,
    vlan: Option<(u16, u16)>,
) -> Vec<u8> {
    use crate::wire::ipv6::{ALL_NODES, Ethernet, NeighborAdvertisementRepr, multicast_mac};
    let repr = NeighborAdvertisementRepr {
        eth: Ethernet {
            src: mac,
            dst: multicast_mac(ALL_NODES),
        },
        src: address,
        dst: ALL_NODES,
        target: address,
        router,
        solicited: false,
        override_: true,
        target_mac: mac,
    };
    let mut frame = vec![0; repr.len()];
    let written = repr.emit(&mut frame);
    frame.truncate(written);
    if let Some((tpid, vid)) = vlan {
        let mut tag = tpid.to_be_bytes().to_vec();
        tag.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        frame.splice(12..12, tag);
    }
    frame
}

/// A broadcast ARP request from `mac`: `sender` asks for `target` (a probe), or announces
/// itself when both are the same (gratuitous), tagged with `vlan` when given.
fn arp_frame(
    mac: [u8; 6],
    sender: Ipv4Addr,
    target: Ipv4Addr,
    vlan: Option<(u16, u16)>,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(46);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    if let Some((tpid, vid)) = vlan {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_is_a_request_for_itself() {
        let mac = [0x02, 0, 0, 0, 0, 9];
        let address = Ipv4Addr::new(198, 51, 100, 10);
        let frame = arp_frame(mac, address, address, None);
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1], "a request");
        assert_eq!(&frame[28..32], &address.octets());
        assert_eq!(&frame[38..42], &address.octets());
        let tagged = arp_frame(mac, address, address, Some((0x8100, 10)));
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0, 10]);
        assert_eq!(tagged.len(), 46);
    }

    /// The advertisement is a valid NA of the address to all nodes, with override set and
    /// solicited clear, that the ND parser reads back; tagged after the MACs.
    #[test]
    fn unsolicited_na_announces_the_address_to_all_nodes() {
        use crate::wire::ipv6 as wire6;
        let mac = [0x02, 0, 0, 0, 0, 9];
        let address: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let frame = unsolicited_na(mac, address, false, None);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        let packet = &frame[14..];
        let info = wire6::parse(packet).expect("IPv6");
        assert_eq!((info.src, info.dst), (address, wire6::ALL_NODES));
        assert_eq!(packet[7], 255, "hop limit 255");
        let icmp = &packet[info.l4_offset..info.packet_len];
        assert!(wire6::icmpv6_checksum_ok(info.src, info.dst, icmp));
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override, not solicited, not a router");
        assert_eq!(
            wire6::parse_nd(icmp, info.src),
            Ok(Some(wire6::Nd::NeighborAdvertisement {
                target: address,
                target_mac: Some(mac),
                router: false,
                solicited: false,
                override_: true,
            }))
        );
        let tagged = unsolicited_na(mac, address, true, Some((0x8100, 20)));
        assert_eq!(&tagged[12..18], &[0x81, 0x00, 0, 20, 0x86, 0xdd]);
        assert_eq!(tagged.len(), frame.len() + 4);
        assert_eq!(tagged[18 + 40 + 4], 0xa0, "router and override");
    }
}
