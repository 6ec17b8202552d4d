//! The VRRPv3 state machine of RFC 5798 §6.4, as a pure function of inputs and time.
//!
//! Architecture invariant: this module does no I/O and reads no clock. The caller feeds
//! it events (startup, shutdown, a received advert) and the current time, asks it for
//! its next deadline, and carries out the [`Action`]s it returns (send an advert, take
//! or release the VIP). That is what lets the tests replay the RFC's rules without
//! sleeping.
//!
//! Beyond RFC 5798 it models what keepalived adds and a real deployment needs: a FAULT
//! state driven by the node's own health ([`Machine::set_healthy`]: a failing master
//! hands over at once with priority 0), `preempt_delay`, a sender filter (adverts only
//! from configured peers), and a gratuitous-ARP re-announce when a master hears a
//! lower-priority master (the end of a split brain).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::packet::Advert;

/// The three states of RFC 5798 §6.4, and keepalived's FAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a Startup event.
    Initialize,
    /// Watching the master; takes over when it goes quiet.
    Backup,
    /// Owns the VIP and advertises.
    Master,
    /// The node is unhealthy: holds no VIP, sends nothing, ignores adverts, until it
    /// is healthy again (keepalived's FAULT).
    Fault,
}

impl State {
    /// Lowercase name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0 = leaving).
    SendAdvert {
        /// The priority to advertise.
        priority: u8,
    },
    /// Start answering on the VIP (and announce it, where the network has ARP).
    TakeVip,
    /// Stop answering on the VIP.
    ReleaseVip,
    /// Announce the VIP again (a burst of gratuitous ARPs) while staying master.
    Announce,
}

/// Why a received advert was discarded without effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// RFC 5798 §7.1: a different virtual router.
    #[error("advert for VRID {got}, this router is VRID {ours}")]
    OtherVrid {
        /// The advert's VRID.
        got: u8,
        /// Ours.
        ours: u8,
    },
    /// RFC 5798 §7.1: the address list does not match ours (a misconfigured peer).
    #[error("advert lists addresses {got:?}, this router has {ours:?}")]
    AddressMismatch {
        /// The advert's addresses.
        got: Vec<Ipv4Addr>,
        /// Ours.
        ours: Vec<Ipv4Addr>,
    },
    /// The machine is in Initialize and ignores adverts.
    #[error("not started")]
    NotStarted,
    /// The sender is not one of the configured peers (nothing of its advert is used,
    /// not even its interval).
    #[error("advert from {0}, which is not a configured peer")]
    UnknownSender(Ipv4Addr),
}

/// Fixed parameters of one virtual router on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual router id.
    pub vrid: u8,
    /// This node's priority, 1..=255 (255 = owns the address).
    pub priority: u8,
    /// Advertisement_Interval in centiseconds.
    pub advert_interval_cs: u16,
    /// Preempt_Mode.
    pub preempt: bool,
    /// This node's primary address (breaks priority ties).
    pub primary_address: Ipv4Addr,
    /// The virtual addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// The only senders whose adverts count; empty accepts any sender (the transports
    /// filter too: this is the last line).
    pub peers: Vec<Ipv4Addr>,
    /// keepalived's `preempt_delay`: for this long after entering Backup, a
    /// lower-priority master is respected as if Preempt_Mode were false.
    pub preempt_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Adver(Instant),
    MasterDown(Instant),
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: Config,
    state: State,
    master_adver_interval_cs: u16,
    timer: Option<Timer>,
    healthy: bool,
    /// Until when a lower-priority master is respected (preempt_delay).
    respect_lower_until: Option<Instant>,
}

fn centis(cs: u32) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

impl Machine {
    /// A machine in Initialize.
    pub fn new(cfg: Config) -> Machine {
        let interval = cfg.advert_interval_cs;
        Machine {
            cfg,
            state: State::Initialize,
            master_adver_interval_cs: interval,
            timer: None,
            healthy: true,
            respect_lower_until: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The Master_Adver_Interval in use, in centiseconds (learnt from the master).
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// The priority this node advertises now (0 in Fault and Initialize).
    pub fn effective_priority(&self) -> u8 {
        match self.state {
            State::Backup | State::Master => self.cfg.priority,
            State::Initialize | State::Fault => 0,
        }
    }

    /// Skew_Time = ((256 − Priority) × Master_Adver_Interval) / 256.
    pub fn skew_time(&self) -> Duration {
        let cs = (256 - u32::from(self.cfg.priority)) * u32::from(self.master_adver_interval_cs);
        Duration::from_micros(u64::from(cs) * 10_000 / 256)
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        centis(3 * u32::from(self.master_adver_interval_cs)) + self.skew_time()
    }

    /// When [`Machine::poll`] must next be called, if a timer runs.
    pub fn deadline(&self) -> Option<Instant> {
        match self.timer {
            Some(Timer::Adver(t) | Timer::MasterDown(t)) => Some(t),
            None => None,
        }
    }

    fn advert_interval(&self) -> Duration {
        centis(u32::from(self.cfg.advert_interval_cs))
    }

    fn become_master(&mut self, now: Instant, actions: &mut Vec<Action>) {
        actions.push(Action::SendAdvert {
            priority: self.cfg.priority,
        });
        actions.push(Action::TakeVip);
        self.timer = Some(Timer::Adver(now + self.advert_interval()));
        self.state = State::Master;
    }

    fn become_backup(&mut self, now: Instant) {
        self.master_adver_interval_cs = self.cfg.advert_interval_cs;
        self.timer = Some(Timer::MasterDown(now + self.master_down_interval()));
        self.respect_lower_until =
            (!self.cfg.preempt_delay.is_zero()).then(|| now + self.cfg.preempt_delay);
        self.state = State::Backup;
    }

    /// The Startup event (§6.4.1). An unhealthy node starts in Fault.
    pub fn startup(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state != State::Initialize {
            return actions;
        }
        if !self.healthy {
            self.state = State::Fault;
            self.timer = None;
        } else if self.cfg.priority == 255 {
            self.become_master(now, &mut actions);
        } else {
            self.become_backup(now);
        }
        actions
    }

    /// The node's own health changed (keepalived's tracking: VIP listener, upstreams).
    /// Unhealthy: a master sends priority 0 and releases the VIP, any started machine
    /// goes to Fault. Healthy again: Fault goes to Backup as at startup.
    pub fn set_healthy(&mut self, now: Instant, healthy: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.healthy == healthy {
            return actions;
        }
        self.healthy = healthy;
        match (self.state, healthy) {
            (State::Master, false) => {
                actions.push(Action::SendAdvert { priority: 0 });
                actions.push(Action::ReleaseVip);
                self.state = State::Fault;
                self.timer = None;
            }
            (State::Backup, false) => {
                self.state = State::Fault;
                self.timer = None;
            }
            (State::Fault, true) => {
                if self.cfg.priority == 255 {
                    self.become_master(now, &mut actions);
                } else {
                    self.become_backup(now);
                }
            }
            _ => {}
        }
        actions
    }

    /// Whether the node's own health is good (the last [`Machine::set_healthy`]).
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The Shutdown event (§6.4.2, §6.4.3): a master says it is leaving with priority 0.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let actions = match self.state {
            State::Master => vec![Action::SendAdvert { priority: 0 }, Action::ReleaseVip],
            State::Backup | State::Initialize | State::Fault => Vec::new(),
        };
        self.timer = None;
        self.state = State::Initialize;
        actions
    }

    /// Fires the running timer if its deadline has passed.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.timer {
            Some(Timer::MasterDown(t)) if t <= now && self.state == State::Backup => {
                // §6.4.2: Master_Down_Timer fires.
                self.become_master(now, &mut actions);
            }
            Some(Timer::Adver(t)) if t <= now && self.state == State::Master => {
                // §6.4.3: Adver_Timer fires.
                actions.push(Action::SendAdvert {
                    priority: self.cfg.priority,
                });
                self.timer = Some(Timer::Adver(now + self.advert_interval()));
            }
            _ => {}
        }
        actions
    }

    /// An advertisement received from `sender` (already checksum-verified by the codec).
    pub fn receive(
        &mut self,
        now: Instant,
        sender: Ipv4Addr,
        adv: &Advert,
    ) -> Result<Vec<Action>, Rejected> {
        if adv.vrid != self.cfg.vrid {
            return Err(Rejected::OtherVrid {
                got: adv.vrid,
                ours: self.cfg.vrid,
            });
        }
        if !self.cfg.peers.is_empty() && !self.cfg.peers.contains(&sender) {
            return Err(Rejected::UnknownSender(sender));
        }
        if adv.addresses != self.cfg.addresses {
            return Err(Rejected::AddressMismatch {
                got: adv.addresses.clone(),
                ours: self.cfg.addresses.clone(),
            });
        }
        let mut actions = Vec::new();
        match self.state {
            State::Initialize => return Err(Rejected::NotStarted),
            // keepalived: a node in FAULT does not take part; adverts change nothing.
            State::Fault => {}
            State::Backup => {
                let respecting = self.respect_lower_until.is_some_and(|until| now < until);
                if adv.priority == 0 {
                    // §6.4.2: the master is leaving; take over after Skew_Time.
                    self.timer = Some(Timer::MasterDown(now + self.skew_time()));
                } else if !self.cfg.preempt || adv.priority >= self.cfg.priority || respecting {
                    self.master_adver_interval_cs = adv.max_adver_int_cs;
                    self.timer = Some(Timer::MasterDown(now + self.master_down_interval()));
                }
                // else: a lower-priority master and we preempt: discard (its interval
                // too), let the timer run.
            }
            State::Master => {
                if adv.priority == 0 {
                    // §6.4.3: another master leaving; assert ourselves at once.
                    actions.push(Action::SendAdvert {
                        priority: self.cfg.priority,
                    });
                    self.timer = Some(Timer::Adver(now + self.advert_interval()));
                } else if adv.priority > self.cfg.priority
                    || (adv.priority == self.cfg.priority && sender > self.cfg.primary_address)
                {
                    self.master_adver_interval_cs = adv.max_adver_int_cs;
                    self.timer = Some(Timer::MasterDown(now + self.master_down_interval()));
                    self.state = State::Backup;
                    self.respect_lower_until = None;
                    actions.push(Action::ReleaseVip);
                } else {
                    // §6.4.3 says discard (we win). keepalived also answers at once and
                    // announces the VIP again: two masters means a healed split brain,
                    // and the clients that followed the other one must come back.
                    actions.push(Action::SendAdvert {
                        priority: self.cfg.priority,
                    });
                    actions.push(Action::Announce);
                    self.timer = Some(Timer::Adver(now + self.advert_interval()));
                }
            }
        }
        Ok(actions)
    }

    /// The advert this machine sends now with `priority`.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            vrid: self.cfg.vrid,
            priority,
            max_adver_int_cs: self.cfg.advert_interval_cs,
            addresses: self.cfg.addresses.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
    const ME: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
    const PEER_LOW: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
    const PEER_HIGH: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 3);

    fn machine(priority: u8, preempt: bool) -> Machine {
        Machine::new(Config {
            vrid: 51,
            priority,
            advert_interval_cs: 100,
            preempt,
            primary_address: ME,
            addresses: vec![VIP],
            peers: vec![PEER_LOW, PEER_HIGH],
            preempt_delay: Duration::ZERO,
        })
    }

    fn adv(priority: u8) -> Advert {
        Advert {
            vrid: 51,
            priority,
            max_adver_int_cs: 100,
            addresses: vec![VIP],
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_follow_the_rfc_formulas() {
        let m = machine(100, true);
        // Skew_Time = ((256 - 100) * 100cs) / 256 = 60.9375 cs
        assert_eq!(
            m.skew_time(),
            Duration::from_micros(609_375),
            "RFC 5798 6.1: Skew_Time"
        );
        assert_eq!(
            m.master_down_interval(),
            ms(3000) + Duration::from_micros(609_375),
            "RFC 5798 6.1: Master_Down_Interval"
        );
    }

    #[test]
    fn startup_below_255_goes_to_backup_with_master_down_timer() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        assert!(
            m.startup(t0).is_empty(),
            "6.4.1: a non-owner sends nothing at startup"
        );
        assert_eq!(m.state(), State::Backup, "6.4.1: transition to Backup");
        assert_eq!(
            m.deadline(),
            Some(t0 + m.master_down_interval()),
            "6.4.1: Master_Down_Timer = Master_Down_Interval"
        );
    }

    #[test]
    fn owner_at_255_becomes_master_at_once() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        let a = m.startup(t0);
        assert_eq!(
            a,
            vec![Action::SendAdvert { priority: 255 }, Action::TakeVip],
            "6.4.1: priority 255 sends an advert and becomes Master"
        );
        assert_eq!(m.state(), State::Master);
        assert_eq!(
            m.deadline(),
            Some(t0 + ms(1000)),
            "6.4.1: Adver_Timer = Advertisement_Interval"
        );
    }

    #[test]
    fn backup_takes_over_when_master_down_timer_fires() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        let down = m.master_down_interval();
        assert!(
            m.poll(t0 + down - ms(1)).is_empty(),
            "no takeover before the timer"
        );
        assert_eq!(m.state(), State::Backup);
        let a = m.poll(t0 + down);
        assert_eq!(
            a,
            vec![Action::SendAdvert { priority: 100 }, Action::TakeVip],
            "6.4.2: Master_Down_Timer fires -> send advert, become Master"
        );
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn adverts_from_a_higher_master_keep_the_backup_quiet() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        for i in 1..=10u64 {
            let now = t0 + ms(1000 * i);
            assert_eq!(m.receive(now, PEER_LOW, &adv(150)), Ok(vec![]));
            assert_eq!(
                m.deadline(),
                Some(now + m.master_down_interval()),
                "6.4.2: reset Master_Down_Timer on each advert"
            );
            assert!(m.poll(now + ms(500)).is_empty());
        }
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn backup_learns_the_masters_interval() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        let mut a = adv(150);
        a.max_adver_int_cs = 10;
        m.receive(t0, PEER_LOW, &a).expect("accepted");
        assert_eq!(
            m.master_down_interval(),
            ms(300) + Duration::from_micros(60_937),
            "6.4.2: Master_Adver_Interval = the advert's interval"
        );
    }

    #[test]
    fn priority_zero_makes_the_backup_take_over_after_skew_time() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        m.receive(t0, PEER_LOW, &adv(0)).expect("accepted");
        assert_eq!(
            m.deadline(),
            Some(t0 + m.skew_time()),
            "6.4.2: priority 0 -> Master_Down_Timer = Skew_Time"
        );
        assert_eq!(
            m.poll(t0 + m.skew_time()),
            vec![Action::SendAdvert { priority: 100 }, Action::TakeVip]
        );
    }

    #[test]
    fn preempting_backup_ignores_a_lower_master() {
        let t0 = Instant::now();
        let mut m = machine(150, true);
        m.startup(t0);
        let deadline = m.deadline();
        m.receive(t0 + ms(100), PEER_LOW, &adv(100))
            .expect("accepted");
        assert_eq!(
            m.deadline(),
            deadline,
            "6.4.2: preempt and lower priority -> discard, timer keeps running"
        );
        assert_eq!(
            m.poll(t0 + m.master_down_interval()),
            vec![Action::SendAdvert { priority: 150 }, Action::TakeVip]
        );
    }

    #[test]
    fn non_preempting_backup_respects_a_lower_master() {
        let t0 = Instant::now();
        let mut m = machine(150, false);
        m.startup(t0);
        m.receive(t0 + ms(100), PEER_LOW, &adv(100))
            .expect("accepted");
        assert_eq!(
            m.deadline(),
            Some(t0 + ms(100) + m.master_down_interval()),
            "6.4.2: Preempt_Mode False -> reset timer"
        );
    }

    #[test]
    fn master_sends_adverts_every_interval() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.startup(t0);
        for i in 1..=5u64 {
            assert_eq!(
                m.poll(t0 + ms(1000 * i)),
                vec![Action::SendAdvert { priority: 255 }],
                "6.4.3: Adver_Timer fires -> send advert"
            );
        }
    }

    #[test]
    fn master_yields_to_higher_priority() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        m.poll(t0 + m.master_down_interval());
        assert_eq!(m.state(), State::Master);
        let a = m
            .receive(t0 + ms(5000), PEER_LOW, &adv(150))
            .expect("accepted");
        assert_eq!(
            a,
            vec![Action::ReleaseVip],
            "6.4.3: higher priority -> transition to Backup"
        );
        assert_eq!(m.state(), State::Backup);
    }

    #[test]
    fn master_keeps_the_vip_against_lower_priority_and_announces_it_again() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.startup(t0);
        assert_eq!(
            m.receive(t0 + ms(10), PEER_HIGH, &adv(100)),
            Ok(vec![Action::SendAdvert { priority: 255 }, Action::Announce]),
            "6.4.3: lower priority -> stay master; keepalived (garp_lower_prio_repeat): \
             answer at once and re-send gratuitous ARPs, a split brain has healed"
        );
        assert_eq!(m.state(), State::Master);
        assert_eq!(m.deadline(), Some(t0 + ms(1010)), "Adver_Timer restarts");
    }

    #[test]
    fn equal_priority_is_won_by_the_higher_address() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        m.poll(t0 + m.master_down_interval());
        assert_eq!(
            m.receive(t0, PEER_LOW, &adv(100)),
            Ok(vec![Action::SendAdvert { priority: 100 }, Action::Announce]),
            "6.4.3: equal priority, lower sender address -> we stay master (and announce)"
        );
        assert_eq!(m.state(), State::Master);
        assert_eq!(
            m.receive(t0, PEER_HIGH, &adv(100)),
            Ok(vec![Action::ReleaseVip]),
            "6.4.3: equal priority, higher sender address -> Backup"
        );
    }

    #[test]
    fn master_answers_a_priority_zero_advert_at_once() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.startup(t0);
        assert_eq!(
            m.receive(t0 + ms(10), PEER_LOW, &adv(0)),
            Ok(vec![Action::SendAdvert { priority: 255 }]),
            "6.4.3: priority 0 -> send advert, reset Adver_Timer"
        );
        assert_eq!(m.deadline(), Some(t0 + ms(1010)));
    }

    #[test]
    fn shutdown_of_a_master_sends_priority_zero() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.startup(t0);
        assert_eq!(
            m.shutdown(),
            vec![Action::SendAdvert { priority: 0 }, Action::ReleaseVip],
            "6.4.3: Shutdown -> send advert with priority 0"
        );
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.deadline(), None);
        let mut b = machine(100, true);
        b.startup(t0);
        assert!(
            b.shutdown().is_empty(),
            "6.4.2: a backup's Shutdown cancels its timer and says nothing"
        );
    }

    #[test]
    fn foreign_or_mismatched_adverts_are_rejected() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        assert_eq!(
            m.receive(t0, PEER_LOW, &adv(150)),
            Err(Rejected::NotStarted)
        );
        m.startup(t0);
        let mut other = adv(150);
        other.vrid = 52;
        assert!(
            matches!(
                m.receive(t0, PEER_LOW, &other),
                Err(Rejected::OtherVrid { .. })
            ),
            "7.1: VRID must match"
        );
        let mut wrong = adv(150);
        wrong.addresses = vec![Ipv4Addr::new(127, 0, 0, 101)];
        assert!(matches!(
            m.receive(t0, PEER_LOW, &wrong),
            Err(Rejected::AddressMismatch { .. })
        ));
        assert_eq!(
            m.deadline(),
            Some(t0 + m.master_down_interval()),
            "a rejected advert changes nothing"
        );
    }

    #[test]
    fn adverts_from_strangers_change_nothing_not_even_the_interval() {
        let t0 = Instant::now();
        let mut m = machine(100, true);
        m.startup(t0);
        let stranger = Ipv4Addr::new(127, 0, 1, 99);
        let mut forged = adv(255);
        forged.max_adver_int_cs = 4095;
        assert_eq!(
            m.receive(t0, stranger, &forged),
            Err(Rejected::UnknownSender(stranger)),
            "only configured peers take part (keepalived: unicast_peer / RFC 5798 7.1 \
             filtering by the operator)"
        );
        assert_eq!(m.master_adver_interval_cs(), 100, "interval not adopted");
        assert_eq!(m.deadline(), Some(t0 + m.master_down_interval()));
    }

    #[test]
    fn a_discarded_lower_priority_advert_does_not_set_the_interval() {
        let t0 = Instant::now();
        let mut m = machine(150, true);
        m.startup(t0);
        let mut low = adv(100);
        low.max_adver_int_cs = 4095;
        m.receive(t0 + ms(10), PEER_LOW, &low).expect("valid");
        assert_eq!(
            m.master_adver_interval_cs(),
            100,
            "6.4.2: preempt and lower priority -> discard the advert, its \
             Max_Adver_Int included"
        );
        let mut m = machine(255, true);
        m.startup(t0);
        m.receive(t0, PEER_LOW, &low).expect("valid");
        assert_eq!(
            m.master_adver_interval_cs(),
            100,
            "6.4.3: a master discards a lower-priority advert"
        );
    }

    #[test]
    fn an_unhealthy_master_hands_over_at_once_and_comes_back_as_backup() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.startup(t0);
        assert_eq!(
            m.set_healthy(t0 + ms(5), false),
            vec![Action::SendAdvert { priority: 0 }, Action::ReleaseVip],
            "keepalived FAULT: drop the VIP and send priority 0 so the backup takes \
             over after its skew time"
        );
        assert_eq!(m.state(), State::Fault);
        assert_eq!(m.deadline(), None, "FAULT runs no timer");
        assert_eq!(m.poll(t0 + ms(10_000)), vec![], "FAULT sends nothing");
        assert_eq!(
            m.receive(t0 + ms(20), PEER_LOW, &adv(0)),
            Ok(vec![]),
            "FAULT ignores adverts"
        );
        assert_eq!(m.effective_priority(), 0);
        let back = t0 + ms(20_000);
        let mut m2 = machine(100, true);
        m2.startup(t0);
        m2.set_healthy(t0, false);
        assert_eq!(m2.state(), State::Fault, "a backup goes to FAULT too");
        assert_eq!(m2.set_healthy(back, true), vec![]);
        assert_eq!(
            m2.state(),
            State::Backup,
            "healthy again: take part as at startup (6.4.1)"
        );
        assert_eq!(m2.deadline(), Some(back + m2.master_down_interval()));
    }

    #[test]
    fn an_unhealthy_node_starts_in_fault() {
        let t0 = Instant::now();
        let mut m = machine(255, true);
        m.set_healthy(t0, false);
        assert_eq!(m.startup(t0), vec![], "no advert, no VIP while unhealthy");
        assert_eq!(m.state(), State::Fault);
        assert_eq!(
            m.set_healthy(t0 + ms(1), true),
            vec![Action::SendAdvert { priority: 255 }, Action::TakeVip],
            "6.4.1: the address owner becomes master as soon as it can take part"
        );
    }

    #[test]
    fn preempt_delay_respects_a_lower_master_for_a_while() {
        let t0 = Instant::now();
        let mut m = Machine::new(Config {
            preempt_delay: ms(5000),
            ..machine(150, true).config().clone()
        });
        m.startup(t0);
        // Adverts from a lower-priority master every second.
        let mut now = t0;
        for _ in 0..4 {
            now += ms(1000);
            m.receive(now, PEER_LOW, &adv(100)).expect("valid");
            assert_eq!(
                m.deadline(),
                Some(now + m.master_down_interval()),
                "keepalived preempt_delay: within the delay a lower master keeps the \
                 backup quiet"
            );
            assert_eq!(m.poll(now + ms(999)), vec![]);
        }
        assert_eq!(m.state(), State::Backup);
        // Past the delay the adverts are discarded and the timer runs out.
        let deadline = m.deadline();
        now = t0 + ms(5000);
        m.receive(now, PEER_LOW, &adv(100)).expect("valid");
        assert_eq!(m.deadline(), deadline, "past preempt_delay: 6.4.2 discard");
        let fire = deadline.expect("timer");
        assert_eq!(
            m.poll(fire),
            vec![Action::SendAdvert { priority: 150 }, Action::TakeVip],
            "then preempt"
        );
    }

    fn exchange(me: &mut Machine, peer: &mut Machine, addr: Ipv4Addr, now: Instant) {
        for action in me.poll(now) {
            if let Action::SendAdvert { priority } = action {
                let _ = peer.receive(now, addr, &me.advert(priority));
            }
        }
    }

    #[test]
    fn two_machines_converge_on_the_higher_priority() {
        // lb1 (150) and lb2 (100) exchanging adverts over a perfect network.
        let t0 = Instant::now();
        let a1 = Ipv4Addr::new(127, 0, 1, 1);
        let a2 = Ipv4Addr::new(127, 0, 1, 2);
        let mk = |p, a| {
            Machine::new(Config {
                vrid: 51,
                priority: p,
                advert_interval_cs: 10,
                preempt: true,
                primary_address: a,
                addresses: vec![VIP],
                peers: Vec::new(),
                preempt_delay: Duration::ZERO,
            })
        };
        let mut lb1 = mk(150, a1);
        let mut lb2 = mk(100, a2);
        lb2.startup(t0);
        // lb2 alone becomes master after its Master_Down_Interval.
        let mut now = t0;
        while lb2.state() != State::Master {
            now = lb2.deadline().expect("timer");
            lb2.poll(now);
        }
        assert!(now - t0 < ms(400));
        // lb1 starts; with preempt it takes the VIP back.
        lb1.startup(now);
        let mut owners = Vec::new();
        for _ in 0..200 {
            let next = [lb1.deadline(), lb2.deadline()]
                .into_iter()
                .flatten()
                .min()
                .expect("timers");
            now = next;
            exchange(&mut lb1, &mut lb2, a1, now);
            exchange(&mut lb2, &mut lb1, a2, now);
            owners.push((lb1.state(), lb2.state()));
        }
        assert_eq!(owners.last(), Some(&(State::Master, State::Backup)));
    }
}
