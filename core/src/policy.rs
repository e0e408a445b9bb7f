//! The provider's policy: every duration, fee and mode the business rules
//! of RULES.md name, as the configuration's `policy:` section writes them
//! (`policy: {billing: {suspendAfter: 15d}}`). Every key has the default the
//! rules give; an unknown key is refused, naming it.

use std::fmt;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, civil::Weekday};
use serde::{Deserialize, Serialize};

/// Longest duration a key may hold: a century is far past any contract.
const MAX_DAYS: u64 = 100 * 366;
/// Most reminders one notice key may list.
const MAX_NOTICES: usize = 10;
/// Most verified versions a storage secondary may keep.
const MAX_VERSIONS: u32 = 1000;

/// The unit of a [`PolicyDuration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationUnit {
    Seconds,
    Minutes,
    Hours,
    Days,
    Weeks,
    /// Monday to Friday (R26's "7 working days").
    WorkingDays,
    /// Calendar months (UTC), the last day of a shorter month standing in
    /// for a day it lacks.
    Months,
    Years,
}

impl DurationUnit {
    const ALL: [(Self, &'static str); 8] = [
        // Longest suffixes first, so `mo` is not read as `m`.
        (Self::WorkingDays, "wd"),
        (Self::Months, "mo"),
        (Self::Seconds, "s"),
        (Self::Minutes, "m"),
        (Self::Hours, "h"),
        (Self::Days, "d"),
        (Self::Weeks, "w"),
        (Self::Years, "y"),
    ];

    fn suffix(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(unit, _)| *unit == self)
            .map_or("s", |(_, suffix)| suffix)
    }

    /// Days one unit can span at most, to bound a duration.
    fn max_days_per_unit(self) -> f64 {
        match self {
            Self::Seconds => 1.0 / 86_400.0,
            Self::Minutes => 1.0 / 1_440.0,
            Self::Hours => 1.0 / 24.0,
            Self::Days => 1.0,
            Self::Weeks => 7.0,
            // 7/5 of a day on average, plus a weekend at either end.
            Self::WorkingDays => 7.0 / 5.0 + 2.0,
            Self::Months => 31.0,
            Self::Years => 366.0,
        }
    }
}

/// A duration as the policy writes it: `90s`, `15m`, `72h`, `15d`, `2w`,
/// `7wd`, `24mo`, `1y`. Never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDuration {
    amount: u32,
    unit: DurationUnit,
}

impl PolicyDuration {
    pub const fn seconds(amount: u32) -> Self {
        Self::new(amount, DurationUnit::Seconds)
    }
    pub const fn hours(amount: u32) -> Self {
        Self::new(amount, DurationUnit::Hours)
    }
    pub const fn days(amount: u32) -> Self {
        Self::new(amount, DurationUnit::Days)
    }
    pub const fn working_days(amount: u32) -> Self {
        Self::new(amount, DurationUnit::WorkingDays)
    }
    pub const fn months(amount: u32) -> Self {
        Self::new(amount, DurationUnit::Months)
    }

    const fn new(amount: u32, unit: DurationUnit) -> Self {
        Self { amount, unit }
    }

    pub fn is_zero(&self) -> bool {
        self.amount == 0
    }

    /// The instant this long after `from`. Calendar units count on the UTC
    /// calendar; working days skip Saturdays and Sundays.
    pub fn after(&self, from: Timestamp) -> Timestamp {
        self.shift(from, 1)
    }

    /// The instant this long before `to` (a notice ahead of a deadline).
    pub fn before(&self, to: Timestamp) -> Timestamp {
        self.shift(to, -1)
    }

    fn shift(&self, from: Timestamp, sign: i64) -> Timestamp {
        let amount = sign * i64::from(self.amount);
        let span = match self.unit {
            DurationUnit::Seconds => Span::new().seconds(amount),
            DurationUnit::Minutes => Span::new().minutes(amount),
            DurationUnit::Hours => Span::new().hours(amount),
            DurationUnit::Days => Span::new().days(amount),
            DurationUnit::Weeks => Span::new().weeks(amount),
            DurationUnit::Months => Span::new().months(amount),
            DurationUnit::Years => Span::new().years(amount),
            DurationUnit::WorkingDays => return shift_working_days(from, self.amount, sign),
        };
        // Parsing bounds every duration to a century: no overflow is possible
        // for any instant a clock returns; saturate rather than panic anyway.
        let saturated = if sign < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        };
        from.to_zoned(TimeZone::UTC)
            .checked_add(span)
            .map_or(saturated, |zoned| zoned.timestamp())
    }
}

fn shift_working_days(from: Timestamp, count: u32, sign: i64) -> Timestamp {
    let mut at = from.to_zoned(TimeZone::UTC);
    let mut left = count;
    while left > 0 {
        at = match at.checked_add(Span::new().days(sign)) {
            Ok(next) => next,
            Err(_) if sign < 0 => return Timestamp::MIN,
            Err(_) => return Timestamp::MAX,
        };
        if !matches!(at.weekday(), Weekday::Saturday | Weekday::Sunday) {
            left -= 1;
        }
    }
    at.timestamp()
}

impl fmt::Display for PolicyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.amount, self.unit.suffix())
    }
}

impl FromStr for PolicyDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || {
            format!(
                "{text:?} is not a duration: write a whole number and a unit, like 90s, 15m, 72h, 15d, 2w, 7wd, 24mo or 1y"
            )
        };
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, suffix) = text.split_at(digits);
        let unit = DurationUnit::ALL
            .iter()
            .find(|(_, s)| *s == suffix)
            .map(|(unit, _)| *unit)
            .ok_or_else(shape)?;
        let amount: u32 = number.parse().map_err(|_| shape())?;
        if f64::from(amount) * unit.max_days_per_unit() > MAX_DAYS as f64 {
            return Err(format!("{text:?} is longer than a century"));
        }
        Ok(Self { amount, unit })
    }
}

impl Serialize for PolicyDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PolicyDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a suspended server is held (R5: an abusing VPS keeps running with
/// its network cut, for evidence; R1: an unpaid one is stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuspensionMode {
    /// Powered off; disk kept.
    Stopped,
    /// Running, every packet to and from it dropped.
    NetworkIsolated,
    /// Frozen in memory; disk kept.
    Paused,
}

impl SuspensionMode {
    /// Its name in the configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::NetworkIsolated => "network_isolated",
            Self::Paused => "paused",
        }
    }
}

/// The `policy:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    /// ISO 4217 code every fee is in, in minor units.
    pub currency: String,
    pub billing: BillingPolicy,
    pub abuse: AbusePolicy,
    pub audit: AuditPolicy,
    pub cancel: CancelPolicy,
    pub withdrawal: WithdrawalPolicy,
    pub termination: TerminationPolicy,
    pub inactivity: InactivityPolicy,
    pub history: HistoryPolicy,
    pub ip: IpPolicy,
    pub dnsbl: DnsblPolicy,
    pub storage: StoragePolicy,
    pub restore: RestorePolicy,
    pub notice: NoticePolicy,
    pub maintenance: MaintenancePolicy,
    pub power: PowerPolicy,
    pub backups: BackupsPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
            billing: BillingPolicy::default(),
            abuse: AbusePolicy::default(),
            audit: AuditPolicy::default(),
            cancel: CancelPolicy::default(),
            withdrawal: WithdrawalPolicy::default(),
            termination: TerminationPolicy::default(),
            inactivity: InactivityPolicy::default(),
            history: HistoryPolicy::default(),
            ip: IpPolicy::default(),
            dnsbl: DnsblPolicy::default(),
            storage: StoragePolicy::default(),
            restore: RestorePolicy::default(),
            notice: NoticePolicy::default(),
            maintenance: MaintenancePolicy::default(),
            power: PowerPolicy::default(),
            backups: BackupsPolicy::default(),
        }
    }
}

/// R1–R4, R16.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BillingPolicy {
    /// From the reminder (or the due date, see `requireReminder`) to suspension.
    pub suspend_after: PolicyDuration,
    /// Whether suspension waits for a recorded reminder.
    pub require_reminder: bool,
    /// From suspension to the destruction of the account's data (R3).
    pub destroy_data_after: PolicyDuration,
    pub suspension_mode: SuspensionMode,
    /// How long invoices stay readable by the customer (R16).
    pub invoice_visibility: PolicyDuration,
}

impl Default for BillingPolicy {
    fn default() -> Self {
        Self {
            suspend_after: PolicyDuration::days(15),
            require_reminder: true,
            destroy_data_after: PolicyDuration::days(15),
            suspension_mode: SuspensionMode::Stopped,
            invoice_visibility: PolicyDuration::months(12),
        }
    }
}

/// R5–R7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AbusePolicy {
    pub termination_notice: PolicyDuration,
    pub fee_per_report: u64,
    pub minimum_per_case: u64,
    /// Reports against one server within this window form one case.
    pub case_window: PolicyDuration,
    pub suspension_mode: SuspensionMode,
}

impl Default for AbusePolicy {
    fn default() -> Self {
        Self {
            termination_notice: PolicyDuration::hours(72),
            fee_per_report: 50_000,
            minimum_per_case: 100_000,
            case_window: PolicyDuration::days(30),
            suspension_mode: SuspensionMode::NetworkIsolated,
        }
    }
}

/// R10: audit rows are kept this long after the account ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuditPolicy {
    pub retention: PolicyDuration,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            retention: PolicyDuration::months(12),
        }
    }
}

/// R11.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CancelPolicy {
    pub max_delay: PolicyDuration,
}

impl Default for CancelPolicy {
    fn default() -> Self {
        Self {
            max_delay: PolicyDuration::days(10),
        }
    }
}

/// R13.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WithdrawalPolicy {
    pub period: PolicyDuration,
}

impl Default for WithdrawalPolicy {
    fn default() -> Self {
        Self {
            period: PolicyDuration::days(7),
        }
    }
}

/// R14.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TerminationPolicy {
    /// From termination to the wipe of disks and volumes.
    pub data_retention: PolicyDuration,
    /// From termination to the deletion of the account's own data.
    pub account_data_retention: PolicyDuration,
    /// How long a terminated server stays listed as `terminated`.
    pub record_retention: PolicyDuration,
}

impl Default for TerminationPolicy {
    fn default() -> Self {
        Self {
            data_retention: PolicyDuration::seconds(0),
            account_data_retention: PolicyDuration::days(90),
            record_retention: PolicyDuration::days(30),
        }
    }
}

/// R15.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InactivityPolicy {
    pub period: PolicyDuration,
    pub notice: PolicyDuration,
}

impl Default for InactivityPolicy {
    fn default() -> Self {
        Self {
            period: PolicyDuration::months(24),
            notice: PolicyDuration::days(15),
        }
    }
}

/// R17.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HistoryPolicy {
    /// Kept in the live store.
    pub active: PolicyDuration,
    /// Then archived this long, then deleted.
    pub archive: PolicyDuration,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            active: PolicyDuration::months(6),
            archive: PolicyDuration::months(12),
        }
    }
}

/// R21, R22.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IpPolicy {
    /// A released address waits this long before reuse.
    pub quarantine: PolicyDuration,
    /// Charged to a leaving customer whose address is blacklisted.
    pub cleanup_fee: u64,
}

impl Default for IpPolicy {
    fn default() -> Self {
        Self {
            quarantine: PolicyDuration::days(7),
            cleanup_fee: 250_000,
        }
    }
}

/// R20.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsblPolicy {
    /// How often every allocated address is checked again.
    pub sweep_interval: PolicyDuration,
}

impl Default for DnsblPolicy {
    fn default() -> Self {
        Self {
            sweep_interval: PolicyDuration::hours(24),
        }
    }
}

/// R24–R26.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StoragePolicy {
    /// Data older than this can always be restored.
    pub restore_guarantee: PolicyDuration,
    pub replication_interval: PolicyDuration,
    pub verify_interval: PolicyDuration,
    /// Verified versions kept on the secondary.
    pub versions: u32,
}

impl Default for StoragePolicy {
    fn default() -> Self {
        Self {
            restore_guarantee: PolicyDuration::working_days(7),
            replication_interval: PolicyDuration::hours(1),
            verify_interval: PolicyDuration::hours(24),
            versions: 7,
        }
    }
}

/// R18.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RestorePolicy {
    pub fee: u64,
}

impl Default for RestorePolicy {
    fn default() -> Self {
        Self { fee: 159_000 }
    }
}

/// When customers are told before a termination or deletion (R6, R14, R15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NoticePolicy {
    pub before: Vec<PolicyDuration>,
}

impl Default for NoticePolicy {
    fn default() -> Self {
        Self {
            before: vec![PolicyDuration::hours(72), PolicyDuration::hours(24)],
        }
    }
}

/// R9.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MaintenancePolicy {
    /// A maintenance announced without an end lasts this long.
    pub default_window: PolicyDuration,
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        Self {
            default_window: PolicyDuration::hours(4),
        }
    }
}

/// Daily backups of servers' disks (R3, R18).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BackupsPolicy {
    /// When daily backups start, UTC (`02:00-05:00`); each server has its
    /// own minute in it.
    pub window: crate::backups::DailyWindow,
    /// How long a server's backups outlive the destruction of its data
    /// for non-payment (R3), so that an operator's restore (R18) brings it
    /// back with its data; 0s: they go with it.
    pub keep_after_destruction: PolicyDuration,
}

impl Default for BackupsPolicy {
    fn default() -> Self {
        Self {
            window: crate::backups::DailyWindow::default(),
            keep_after_destruction: PolicyDuration::seconds(0),
        }
    }
}

/// How guests are stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PowerPolicy {
    /// How long a guest asked to shut down (ACPI) has before it is powered
    /// off; the controller holds no worker meanwhile.
    pub shutdown_grace: PolicyDuration,
}

impl Default for PowerPolicy {
    fn default() -> Self {
        Self {
            shutdown_grace: PolicyDuration::seconds(120),
        }
    }
}

impl Policy {
    /// Checks what the types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: &str| Err((format!("policy.{key}"), message.to_owned()));
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return invalid("currency", "must be an ISO 4217 code such as EUR");
        }
        let intervals = [
            ("dnsbl.sweepInterval", self.dnsbl.sweep_interval),
            (
                "storage.replicationInterval",
                self.storage.replication_interval,
            ),
            ("storage.verifyInterval", self.storage.verify_interval),
            ("maintenance.defaultWindow", self.maintenance.default_window),
            ("abuse.caseWindow", self.abuse.case_window),
            ("power.shutdownGrace", self.power.shutdown_grace),
        ];
        for (key, interval) in intervals {
            if interval.is_zero() {
                return invalid(key, "must be longer than 0s");
            }
        }
        if !(1..=MAX_VERSIONS).contains(&self.storage.versions) {
            return invalid("storage.versions", "must be from 1 to 1000");
        }
        if self.notice.before.len() > MAX_NOTICES {
            return invalid("notice.before", "lists at most 10 notices");
        }
        if self.notice.before.iter().any(PolicyDuration::is_zero) {
            return invalid(
                "notice.before",
                "a notice is sent some time before: 0s is none",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspension_mode_names_are_their_configuration_names() {
        for mode in [
            SuspensionMode::Stopped,
            SuspensionMode::NetworkIsolated,
            SuspensionMode::Paused,
        ] {
            assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn durations_parse_print_and_refuse_what_is_not_one() {
        for text in ["0s", "90s", "15m", "72h", "15d", "2w", "7wd", "24mo", "1y"] {
            let parsed: PolicyDuration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        for bad in [
            "",
            "15",
            "d",
            "-5d",
            "1.5h",
            "15 d",
            "15D",
            "15days",
            "4294967296s",
            "101y",
            "40000d",
        ] {
            assert!(bad.parse::<PolicyDuration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_count_on_the_calendar() {
        let start = at("2026-01-31T10:00:00Z");
        assert_eq!(
            PolicyDuration::days(15).after(start),
            at("2026-02-15T10:00:00Z")
        );
        assert_eq!(
            PolicyDuration::hours(72).after(start),
            at("2026-02-03T10:00:00Z")
        );
        // A month after 31 January is the last day of February.
        assert_eq!(
            PolicyDuration::months(1).after(start),
            at("2026-02-28T10:00:00Z")
        );
        assert_eq!(
            PolicyDuration::months(24).after(start),
            at("2028-01-31T10:00:00Z")
        );
        assert_eq!(PolicyDuration::seconds(0).after(start), start);
        // Notices count back from a deadline the same way.
        assert_eq!(
            PolicyDuration::hours(72).before(at("2026-02-03T10:00:00Z")),
            start
        );
        assert_eq!(
            PolicyDuration::working_days(1).before(at("2026-02-02T10:00:00Z")),
            at("2026-01-30T10:00:00Z"),
            "the working day before a Monday is the Friday"
        );
        // 7 working days from Friday 6 March 2026: the 17th, skipping two weekends.
        let friday = at("2026-03-06T12:00:00Z");
        assert_eq!(
            PolicyDuration::working_days(7).after(friday),
            at("2026-03-17T12:00:00Z")
        );
    }

    #[test]
    fn every_key_has_the_rules_default() {
        let policy: Policy = serde_yaml::from_str("{}").unwrap();
        assert_eq!(policy, Policy::default());
        policy.validate().unwrap();
        assert_eq!(policy.billing.suspend_after.to_string(), "15d");
        assert!(policy.billing.require_reminder);
        assert_eq!(policy.billing.destroy_data_after.to_string(), "15d");
        assert_eq!(policy.abuse.termination_notice.to_string(), "72h");
        assert_eq!(
            (policy.abuse.fee_per_report, policy.abuse.minimum_per_case),
            (50_000, 100_000)
        );
        assert_eq!(
            policy.abuse.suspension_mode,
            SuspensionMode::NetworkIsolated
        );
        assert_eq!(policy.billing.suspension_mode, SuspensionMode::Stopped);
        assert_eq!(policy.ip.quarantine.to_string(), "7d");
        assert_eq!(policy.ip.cleanup_fee, 250_000);
        assert_eq!(policy.restore.fee, 159_000);
        assert_eq!(policy.termination.data_retention.to_string(), "0s");
        assert_eq!(policy.storage.restore_guarantee.to_string(), "7wd");
        let notices: Vec<String> = policy
            .notice
            .before
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(notices, ["72h", "24h"]);
        assert_eq!(policy.backups.window.to_string(), "02:00-05:00");
        assert_eq!(policy.backups.keep_after_destruction.to_string(), "0s");
    }

    #[test]
    fn r18_backup_keys_are_read_and_a_bad_window_is_refused() {
        let policy: Policy =
            serde_yaml::from_str("backups: {window: '22:00-01:30', keepAfterDestruction: 30d}\n")
                .unwrap();
        assert_eq!(policy.backups.window.to_string(), "22:00-01:30");
        assert_eq!(
            policy.backups.keep_after_destruction,
            PolicyDuration::days(30)
        );
        for bad in ["backups: {window: '5-6'}", "backups: {keep: 3}"] {
            assert!(serde_yaml::from_str::<Policy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_given_replaces_only_its_default() {
        let policy: Policy = serde_yaml::from_str(
            "billing: {suspendAfter: 0s, requireReminder: false}\nip: {quarantine: 90s}\n",
        )
        .unwrap();
        assert!(policy.billing.suspend_after.is_zero());
        assert!(!policy.billing.require_reminder);
        assert_eq!(policy.billing.destroy_data_after, PolicyDuration::days(15));
        assert_eq!(policy.ip.quarantine, PolicyDuration::seconds(90));
        assert_eq!(policy.ip.cleanup_fee, 250_000);
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("currency: euro", "policy.currency"),
            ("dnsbl: {sweepInterval: 0s}", "policy.dnsbl.sweepInterval"),
            ("storage: {versions: 0}", "policy.storage.versions"),
            ("notice: {before: [72h, 0s]}", "policy.notice.before"),
        ];
        for (yaml, key) in cases {
            let policy: Policy = serde_yaml::from_str(yaml).unwrap();
            let (named, _) = policy.validate().unwrap_err();
            assert_eq!(named, key, "{yaml}");
        }
    }
}
