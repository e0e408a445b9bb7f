//! Daily backups of a server's disk (R18): when the next one is taken, what
//! it is called, and which old ones go. A backup is a snapshot the
//! controller takes in the provider's daily window (`backups.window`, UTC),
//! each server at its own minute of it so that a hypervisor's guests are
//! not all copied at once. Its identity is its slot, so a controller that
//! restarts, or a second one, takes each day's backup once.

use std::fmt;
use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Most backups a server may keep.
pub const MAX_KEEP: u32 = 30;

const MINUTES_PER_DAY: u32 = 24 * 60;

/// A daily window, UTC: `02:00-05:00`; one that ends before it starts runs
/// over midnight (`22:00-02:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    /// Minutes after midnight.
    start: u32,
    /// Its length in minutes, 1 to a whole day.
    length: u32,
}

impl DailyWindow {
    pub const fn new(start_minute: u32, length_minutes: u32) -> Self {
        Self {
            start: start_minute % MINUTES_PER_DAY,
            length: if length_minutes == 0 {
                1
            } else if length_minutes > MINUTES_PER_DAY {
                MINUTES_PER_DAY
            } else {
                length_minutes
            },
        }
    }
}

impl Default for DailyWindow {
    fn default() -> Self {
        Self::new(2 * 60, 3 * 60)
    }
}

fn parse_clock(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

impl FromStr for DailyWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a daily window like \"02:00-05:00\" (UTC)");
        let (start, end) = text.trim().split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            parse_clock(start.trim()).ok_or_else(bad)?,
            parse_clock(end.trim()).ok_or_else(bad)?,
        );
        if start == end {
            return Err(format!("{text:?} is empty: its start and end are the same"));
        }
        Ok(Self::new(
            start,
            (end + MINUTES_PER_DAY - start) % MINUTES_PER_DAY,
        ))
    }
}

impl fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = (self.start + self.length) % MINUTES_PER_DAY;
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            end / 60,
            end % 60
        )
    }
}

impl Serialize for DailyWindow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DailyWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// FNV-1a: a stable spread of servers over the window (the same on every
/// controller, in every release).
fn spread(server: &str) -> u64 {
    server.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One day's backup of a server: its instant, inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: Timestamp,
    /// The window's end that day: a slot missed (the controller down) is
    /// not taken after it, the next day's is.
    pub until: Timestamp,
}

impl Slot {
    /// The backup's version: the slot in Unix milliseconds.
    pub fn version(&self) -> u64 {
        u64::try_from(self.at.as_millisecond()).unwrap_or(0)
    }

    /// The object name of `server`'s backup of this slot: the same for
    /// every controller, so it is made once (`st-` and 16 hex digits).
    pub fn object_name(&self, server: &str) -> String {
        let digest = spread(&format!("{server}/{}", self.version()));
        format!("st-{:016x}", digest | 1)
    }

    /// The customer's name of it: `backup-2026-12-07-0317`.
    pub fn display_name(&self) -> String {
        self.at.strftime("backup-%Y-%m-%d-%H%M").to_string()
    }
}

impl DailyWindow {
    /// `server`'s slot of the window that starts on the UTC day of `day`.
    fn slot_on(&self, server: &str, day: Timestamp) -> Slot {
        let midnight = day.as_second() - day.as_second().rem_euclid(86_400);
        let offset = spread(server) % u64::from(self.length);
        let start = midnight + i64::from(self.start) * 60;
        let offset_seconds = i64::try_from(offset).unwrap_or(0) * 60;
        let at = Timestamp::from_second(start + offset_seconds).unwrap_or(day);
        let until = Timestamp::from_second(start + i64::from(self.length) * 60).unwrap_or(day);
        Slot { at, until }
    }

    /// The slot of `server` to take now, if one is due (its window open
    /// and its minute passed), and the instant to look again.
    pub fn due(&self, server: &str, now: Timestamp) -> (Option<Slot>, Timestamp) {
        let day = SignedDuration::from_hours(24);
        // A window over midnight may have opened the day before.
        let candidates = [
            self.slot_on(server, now.checked_sub(day).unwrap_or(now)),
            self.slot_on(server, now),
            self.slot_on(server, now.checked_add(day).unwrap_or(now)),
        ];
        let due = candidates
            .iter()
            .copied()
            .find(|slot| slot.at <= now && now < slot.until);
        let next = candidates
            .iter()
            .map(|slot| slot.at)
            .filter(|at| *at > now)
            .min()
            .unwrap_or(now.checked_add(day).unwrap_or(now));
        (due, next)
    }
}

/// Where a backup stands, for pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptState {
    /// Copied, in both zones: it counts towards `keep`.
    Ready,
    /// Not copied yet (or not placed): neither counted nor deleted, so an
    /// older ready one is never given up for one that may fail.
    Copying,
    /// Its disk could not be copied: it goes.
    Failed,
}

/// A backup a server has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub version: u64,
    pub state: KeptState,
}

/// The backups to delete so that `keep` ready ones remain: failed ones,
/// and the oldest ready ones beyond `keep`; never one still being copied.
pub fn prune(mut backups: Vec<Kept>, keep: u32) -> Vec<String> {
    backups.sort_by_key(|b| std::cmp::Reverse(b.version));
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let failed = backups.iter().filter(|b| b.state == KeptState::Failed);
    let beyond = backups
        .iter()
        .filter(|b| b.state == KeptState::Ready)
        .skip(keep);
    failed.chain(beyond).map(|b| b.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn windows_parse_print_and_refuse_what_is_not_one() {
        let window: DailyWindow = "02:00-05:00".parse().unwrap();
        assert_eq!(window, DailyWindow::default());
        assert_eq!(window.to_string(), "02:00-05:00");
        let overnight: DailyWindow = "22:30-01:15".parse().unwrap();
        assert_eq!(overnight.to_string(), "22:30-01:15");
        for bad in [
            "",
            "2-5",
            "02:00",
            "24:00-01:00",
            "02:60-03:00",
            "03:00-03:00",
            "ab:cd-ef:gh",
        ] {
            assert!(bad.parse::<DailyWindow>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn r18_each_server_has_one_slot_a_day_inside_the_window() {
        let window: DailyWindow = "02:00-05:00".parse().unwrap();
        let mut minutes = std::collections::BTreeSet::new();
        for n in 0..200 {
            let server = format!("vs-{n:016x}");
            let (due, next) = window.due(&server, at("2026-12-07T01:00:00Z"));
            assert_eq!(due, None, "the window is not open yet");
            assert!(next >= at("2026-12-07T02:00:00Z") && next < at("2026-12-07T05:00:00Z"));
            minutes.insert(next);
            // Due from its minute to the window's end, the same slot.
            let (due, _) = window.due(&server, next);
            let slot = due.unwrap();
            assert_eq!(slot.at, next);
            assert_eq!(slot.until, at("2026-12-07T05:00:00Z"));
            let (later, after) = window.due(&server, at("2026-12-07T04:59:59Z"));
            assert_eq!(later, Some(slot));
            assert_eq!(after.duration_since(next).as_hours(), 24);
            assert_eq!(
                slot.object_name(&server),
                later.unwrap().object_name(&server)
            );
            // Missed (the controller down past the window): tomorrow's.
            let (missed, tomorrow) = window.due(&server, at("2026-12-07T05:00:00Z"));
            assert_eq!(missed, None);
            assert_eq!(tomorrow.duration_since(next).as_hours(), 24);
        }
        assert!(minutes.len() > 100, "servers are spread over the window");
    }

    #[test]
    fn r18_a_window_over_midnight_is_due_on_both_sides_of_it() {
        let window: DailyWindow = "23:00-01:00".parse().unwrap();
        let server = (0..)
            .map(|n| format!("vs-{n:016x}"))
            .find(|s| window.due(s, at("2026-12-07T23:00:00Z")).1 >= at("2026-12-08T00:00:00Z"))
            .unwrap();
        let (_, slot_at) = window.due(&server, at("2026-12-07T23:00:00Z"));
        let (due, _) = window.due(&server, slot_at);
        assert_eq!(due.unwrap().until, at("2026-12-08T01:00:00Z"));
    }

    #[test]
    fn r18_pruning_keeps_the_newest_copied_backups_drops_failed_ones_and_waits_for_copies() {
        use KeptState::*;
        let kept = |name: &str, version, state| Kept {
            name: name.into(),
            version,
            state,
        };
        let backups = vec![
            kept("b1", 1, Ready),
            kept("b2", 2, Ready),
            kept("b3", 3, Failed),
            kept("b4", 4, Ready),
            kept("b5", 5, Ready),
        ];
        let mut gone = prune(backups.clone(), 2);
        gone.sort();
        assert_eq!(gone, ["b1", "b2", "b3"]);
        assert_eq!(prune(backups.clone(), 10), ["b3"]);
        // Today's, not copied yet, takes nothing's place: with keep 1,
        // yesterday's stays until today's is ready.
        let today = vec![kept("yesterday", 1, Ready), kept("today", 2, Copying)];
        assert!(prune(today, 1).is_empty());
        let copied = vec![kept("yesterday", 1, Ready), kept("today", 2, Ready)];
        assert_eq!(prune(copied, 1), ["yesterday"]);
    }
}
