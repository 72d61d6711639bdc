//! The TCP connection state machine, driven by the flags seen in each direction.
//!
//! This is a *state* tracker, not a window tracker: like the state table of Linux
//! `nf_conntrack_proto_tcp.c` it looks at SYN, ACK, FIN and RST and at the direction, not at
//! sequence numbers. It exists to pick the right idle timeout (RFC 5382: a NAT keeps an
//! established connection at least 2 h 4 min and a transitory one at least 4 min) and to know
//! when a connection is assured (worth keeping when the table is full).
//!
//! | state | entered when |
//! |---|---|
//! | `SynSent` | the original side sent SYN (the connection's first packet) |
//! | `SynRecv` | the reply side answered SYN+ACK (or SYN: simultaneous open) |
//! | `Established` | the original side ACKed the SYN+ACK; or a mid-stream pickup (loose mode) |
//! | `FinWait` | one side (the *closer*) sent the first FIN |
//! | `CloseWait` | the other side ACKed that FIN but has not sent its own |
//! | `LastAck` | the other side sent its FIN too; waiting for the closer's last ACK |
//! | `TimeWait` | the closer ACKed the second FIN: the connection is over (2 MSL linger) |
//! | `Close` | a RST was seen in either direction |
//!
//! A SYN from the original side in `TimeWait` or `Close` reopens the connection (`SynSent`),
//! as a client reusing its port does. Packets that fit no transition leave the state alone;
//! they are still forwarded (dropping "invalid" packets is a policy decision, not ours).

use crate::tuple::Direction;

/// The TCP flags that drive the state machine (the low byte of the TCP flags field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN: the sender has no more data.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN: synchronise sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST: reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// PSH: push.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// ACK: the acknowledgement field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// SYN and ACK together (the second packet of the handshake).
    pub const SYN_ACK: TcpFlags = TcpFlags(0x12);
    /// FIN and ACK together.
    pub const FIN_ACK: TcpFlags = TcpFlags(0x11);

    /// True when every flag of `other` is set here.
    #[inline]
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    #[inline]
    #[must_use]
    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    fn class(self) -> FlagClass {
        if self.contains(TcpFlags::RST) {
            FlagClass::Rst
        } else if self.contains(TcpFlags::SYN) {
            if self.contains(TcpFlags::ACK) {
                FlagClass::SynAck
            } else {
                FlagClass::Syn
            }
        } else if self.contains(TcpFlags::FIN) {
            FlagClass::Fin
        } else if self.contains(TcpFlags::ACK) {
            FlagClass::Ack
        } else {
            FlagClass::None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagClass {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    None,
}

/// A TCP connection's state. See the module doc for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    /// SYN seen from the original side.
    SynSent,
    /// SYN+ACK seen from the reply side.
    SynRecv,
    /// Handshake complete (or picked up mid-stream).
    Established,
    /// One side sent FIN.
    FinWait,
    /// The FIN was acknowledged; the other side has not closed yet.
    CloseWait,
    /// Both sides sent FIN; the last ACK is outstanding.
    LastAck,
    /// Both FINs acknowledged.
    TimeWait,
    /// Reset.
    Close,
}

impl TcpState {
    /// Upper-case name as Linux prints it (`ESTABLISHED`, `TIME_WAIT`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }

    const fn code(self) -> u8 {
        match self {
            TcpState::SynSent => 0,
            TcpState::SynRecv => 1,
            TcpState::Established => 2,
            TcpState::FinWait => 3,
            TcpState::CloseWait => 4,
            TcpState::LastAck => 5,
            TcpState::TimeWait => 6,
            TcpState::Close => 7,
        }
    }

    const fn from_code(code: u8) -> TcpState {
        match code & 0x7 {
            0 => TcpState::SynSent,
            1 => TcpState::SynRecv,
            2 => TcpState::Established,
            3 => TcpState::FinWait,
            4 => TcpState::CloseWait,
            5 => TcpState::LastAck,
            6 => TcpState::TimeWait,
            _ => TcpState::Close,
        }
    }

    /// True once the connection is on its way out (a FIN or RST was seen).
    pub const fn is_closing(self) -> bool {
        matches!(
            self,
            TcpState::FinWait
                | TcpState::CloseWait
                | TcpState::LastAck
                | TcpState::TimeWait
                | TcpState::Close
        )
    }
}

/// A TCP state plus the side that sent the first FIN (meaningful from `FinWait` on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpProgress {
    /// The state.
    pub state: TcpState,
    /// Who sent the first FIN; [`Direction::Original`] until someone does.
    pub closer: Direction,
}

impl TcpProgress {
    /// The state a connection starts in when its first packet (original direction) has
    /// `flags`, or `None` when such a packet must not create a connection: a RST never does,
    /// and without `loose` only a bare SYN does. In loose mode (Linux's `nf_conntrack_tcp_loose`,
    /// on by default there too) any other packet picks the connection up as `Established`, so
    /// flows survive a daemon restart.
    pub fn start(flags: TcpFlags, loose: bool) -> Option<TcpProgress> {
        let state = match flags.class() {
            FlagClass::Rst => return None,
            FlagClass::Syn => TcpState::SynSent,
            _ if loose => TcpState::Established,
            _ => return None,
        };
        Some(TcpProgress {
            state,
            closer: Direction::Original,
        })
    }

    /// The state after a packet with `flags` going `direction`.
    #[must_use]
    pub fn advance(self, direction: Direction, flags: TcpFlags) -> TcpProgress {
        use Direction::{Original, Reply};
        use TcpState::*;
        let TcpProgress { state, closer } = self;
        let to = |state| TcpProgress { state, closer };
        match (flags.class(), state) {
            (FlagClass::Rst, _) => to(Close),
            (FlagClass::Syn, SynSent | TimeWait | Close) if direction == Original => TcpProgress {
                state: SynSent,
                closer: Original,
            },
            (FlagClass::Syn | FlagClass::SynAck, SynSent) if direction == Reply => to(SynRecv),
            (FlagClass::SynAck, SynRecv) if direction == Reply => to(SynRecv),
            (FlagClass::Fin, SynRecv | Established) => TcpProgress {
                state: FinWait,
                closer: direction,
            },
            (FlagClass::Fin, FinWait | CloseWait) if direction != closer => to(LastAck),
            (FlagClass::Ack, SynRecv) if direction == Original => to(Established),
            (FlagClass::Ack, FinWait) if direction != closer => to(CloseWait),
            (FlagClass::Ack, LastAck) if direction == closer => to(TimeWait),
            _ => self,
        }
    }

    /// Packs into the low 4 bits of a byte (for an atomic status word).
    pub(crate) const fn pack(self) -> u8 {
        let closer = match self.closer {
            Direction::Original => 0,
            Direction::Reply => 0x8,
        };
        self.state.code() | closer
    }

    /// The inverse of [`pack`](TcpProgress::pack).
    pub(crate) const fn unpack(bits: u8) -> TcpProgress {
        TcpProgress {
            state: TcpState::from_code(bits),
            closer: if bits & 0x8 != 0 {
                Direction::Reply
            } else {
                Direction::Original
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Original, Reply};
    use TcpState::*;

    const SYN: TcpFlags = TcpFlags::SYN;
    const SYN_ACK: TcpFlags = TcpFlags::SYN_ACK;
    const ACK: TcpFlags = TcpFlags::ACK;
    const FIN_ACK: TcpFlags = TcpFlags::FIN_ACK;
    const RST: TcpFlags = TcpFlags::RST;

    fn run(start: TcpFlags, steps: &[(Direction, TcpFlags)]) -> Vec<TcpState> {
        let mut progress = TcpProgress::start(start, false).expect("starts");
        let mut seen = vec![progress.state];
        for &(direction, flags) in steps {
            progress = progress.advance(direction, flags);
            seen.push(progress.state);
        }
        seen
    }

    #[test]
    fn handshake_then_client_closes() {
        let states = run(
            SYN,
            &[
                (Reply, SYN_ACK),
                (Original, ACK),
                (Original, FIN_ACK),
                (Reply, ACK),
                (Reply, FIN_ACK),
                (Original, ACK),
            ],
        );
        assert_eq!(
            states,
            [
                SynSent,
                SynRecv,
                Established,
                FinWait,
                CloseWait,
                LastAck,
                TimeWait
            ]
        );
    }

    #[test]
    fn server_closes_first() {
        let states = run(
            SYN,
            &[
                (Reply, SYN_ACK),
                (Original, ACK),
                (Reply, FIN_ACK),
                (Original, ACK),
                (Original, FIN_ACK),
                (Reply, ACK),
            ],
        );
        assert_eq!(
            states,
            [
                SynSent,
                SynRecv,
                Established,
                FinWait,
                CloseWait,
                LastAck,
                TimeWait
            ]
        );
    }

    #[test]
    fn simultaneous_fins_go_through_last_ack() {
        let states = run(
            SYN,
            &[
                (Reply, SYN_ACK),
                (Original, ACK),
                (Original, FIN_ACK),
                (Reply, FIN_ACK),
                (Original, ACK),
            ],
        );
        assert_eq!(
            states,
            [SynSent, SynRecv, Established, FinWait, LastAck, TimeWait]
        );
    }

    #[test]
    fn the_closer_acking_its_own_fin_changes_nothing() {
        let progress = TcpProgress {
            state: FinWait,
            closer: Original,
        };
        assert_eq!(progress.advance(Original, ACK).state, FinWait);
        assert_eq!(progress.advance(Reply, ACK).state, CloseWait);
    }

    #[test]
    fn the_last_ack_must_come_from_the_closer() {
        let progress = TcpProgress {
            state: LastAck,
            closer: Reply,
        };
        assert_eq!(progress.advance(Original, ACK).state, LastAck);
        assert_eq!(progress.advance(Reply, ACK).state, TimeWait);
    }

    #[test]
    fn rst_closes_from_any_state_in_either_direction() {
        for state in [
            SynSent,
            SynRecv,
            Established,
            FinWait,
            CloseWait,
            LastAck,
            TimeWait,
            Close,
        ] {
            for direction in [Original, Reply] {
                let progress = TcpProgress {
                    state,
                    closer: Original,
                };
                assert_eq!(progress.advance(direction, RST).state, Close);
            }
        }
    }

    #[test]
    fn simultaneous_open() {
        assert_eq!(run(SYN, &[(Reply, SYN)]), [SynSent, SynRecv]);
    }

    #[test]
    fn syn_reopens_time_wait_and_close_only_from_the_original_side() {
        for state in [TimeWait, Close] {
            let progress = TcpProgress {
                state,
                closer: Reply,
            };
            let reopened = progress.advance(Original, SYN);
            assert_eq!(reopened.state, SynSent);
            assert_eq!(reopened.closer, Original);
            assert_eq!(progress.advance(Reply, SYN).state, state);
        }
        let established = TcpProgress {
            state: Established,
            closer: Original,
        };
        assert_eq!(established.advance(Original, SYN).state, Established);
    }

    #[test]
    fn out_of_order_packets_leave_the_state_alone() {
        // ACK from the reply side before the handshake finished.
        assert_eq!(run(SYN, &[(Reply, ACK)]), [SynSent, SynSent]);
        // SYN+ACK from the original side.
        assert_eq!(run(SYN, &[(Original, SYN_ACK)]), [SynSent, SynSent]);
        // FIN before the handshake answer.
        assert_eq!(run(SYN, &[(Original, FIN_ACK)]), [SynSent, SynSent]);
        // Data (no flags) never moves it.
        assert_eq!(run(SYN, &[(Reply, TcpFlags(0))]), [SynSent, SynSent]);
        // The reply side's ACK does not complete the handshake.
        assert_eq!(
            run(SYN, &[(Reply, SYN_ACK), (Reply, ACK)]),
            [SynSent, SynRecv, SynRecv]
        );
    }

    #[test]
    fn fin_in_syn_recv_goes_to_fin_wait() {
        assert_eq!(
            run(SYN, &[(Reply, SYN_ACK), (Original, FIN_ACK)]),
            [SynSent, SynRecv, FinWait]
        );
    }

    #[test]
    fn start_rules() {
        assert_eq!(TcpProgress::start(RST, true), None);
        assert_eq!(TcpProgress::start(ACK, false), None);
        assert_eq!(TcpProgress::start(SYN_ACK, false), None);
        assert_eq!(
            TcpProgress::start(ACK, true).map(|p| p.state),
            Some(Established)
        );
        assert_eq!(
            TcpProgress::start(SYN, false).map(|p| p.state),
            Some(SynSent)
        );
        // ECN-setup SYN (SYN|ECE|CWR) still counts as a SYN.
        assert_eq!(
            TcpProgress::start(TcpFlags(0xc2), false).map(|p| p.state),
            Some(SynSent)
        );
    }

    #[test]
    fn pack_round_trips() {
        for state in [
            SynSent,
            SynRecv,
            Established,
            FinWait,
            CloseWait,
            LastAck,
            TimeWait,
            Close,
        ] {
            for closer in [Original, Reply] {
                let progress = TcpProgress { state, closer };
                assert_eq!(TcpProgress::unpack(progress.pack()), progress);
            }
        }
    }
}
