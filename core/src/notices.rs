//! What an account is told, and how it is reached: the configuration's
//! `notifications:` section, and the message each change of its standing
//! and each notice of a deadline ahead becomes (pure; the controller
//! queues and delivers them).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::standing::{Change, ChangeKind, Notice, Subject, TerminationCause, Upcoming};
use crate::validate;

/// How notifications leave stratus. Absent channels are not used; with
/// none, nothing is queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notifications {
    /// E-mail to each account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailChannel>,
    /// Every account's notifications, signed, to one endpoint of the
    /// provider (which forwards them as it sees fit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Chargeable events (the billing events), signed, as they are
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_webhook: Option<Webhook>,
    /// Attempts per notification before it is left as failed for an
    /// operator; between them the wait doubles from 30 s up to an hour.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_max_attempts() -> u32 {
    12
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            email: None,
            webhook: None,
            billing_webhook: None,
            max_attempts: default_max_attempts(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailChannel {
    pub smtp: Smtp,
    /// The sender: `noc@example.net` or `Example Hosting <noc@example.net>`.
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Smtp {
    pub host: String,
    /// 465 with `tls`, 587 with `starttls`, 25 with `none` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file (mode 0600) holding the password, required with `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

impl Smtp {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Tls => 465,
            SmtpTls::Starttls => 587,
            SmtpTls::None => 25,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain, then upgraded; refused if the server cannot.
    #[default]
    Starttls,
    /// No encryption: only to a relay on this machine (a loopback host).
    None,
}

/// A signed HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// `https://…`; `http://` only to a loopback host.
    pub url: String,
    /// A file (mode 0600) holding the shared secret the signatures are
    /// made with: at least 16 bytes.
    pub secret_file: String,
}

/// The host part of `http(s)://host[:port]/…`, and whether it is https.
fn url_host(url: &str) -> Option<(bool, &str)> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some((secure, host))
}

/// `localhost` or a loopback address: traffic that never leaves the machine.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The address inside `Name <address>`, or the whole of a bare address.
pub fn mailbox_address(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.ends_with('>')) {
        (Some(open), true) => &mailbox[open + 1..mailbox.len() - 1],
        _ => mailbox,
    }
}

impl Notifications {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
        if let Some(email) = &self.email {
            let smtp = &email.smtp;
            let host_ok =
                validate::is_hostname(&smtp.host) || smtp.host.parse::<std::net::IpAddr>().is_ok();
            if !host_ok {
                return invalid(
                    "notifications.email.smtp.host",
                    "must be a host name or address",
                );
            }
            if smtp.tls == SmtpTls::None && !is_loopback_host(&smtp.host) {
                return invalid(
                    "notifications.email.smtp.tls",
                    "none is allowed only to a relay on this machine (localhost, 127.0.0.1, ::1)",
                );
            }
            if smtp.port == Some(0) {
                return invalid("notifications.email.smtp.port", "must be from 1 to 65535");
            }
            if smtp.username.is_some() != smtp.password_file.is_some() {
                return invalid(
                    "notifications.email.smtp.passwordFile",
                    "username and passwordFile go together",
                );
            }
            if email.from.len() > 254 || !validate::is_email(mailbox_address(&email.from)) {
                return invalid(
                    "notifications.email.from",
                    "must be an address such as noc@example.net or Name <noc@example.net>",
                );
            }
        }
        for (key, webhook) in [
            ("notifications.webhook", &self.webhook),
            ("notifications.billingWebhook", &self.billing_webhook),
        ] {
            let Some(webhook) = webhook else { continue };
            match url_host(&webhook.url) {
                None => return invalid(&format!("{key}.url"), "must be an http(s) URL"),
                Some((false, host)) if !is_loopback_host(host) => {
                    return invalid(
                        &format!("{key}.url"),
                        "must be https (http only to localhost, 127.0.0.1 or ::1)",
                    );
                }
                Some(_) if webhook.url.len() > 2_000 => {
                    return invalid(&format!("{key}.url"), "is longer than 2000 characters");
                }
                Some(_) => {}
            }
            if webhook.secret_file.is_empty() {
                return invalid(&format!("{key}.secretFile"), "must name a file");
            }
        }
        if !(1..=100).contains(&self.max_attempts) {
            return invalid("notifications.maxAttempts", "must be from 1 to 100");
        }
        Ok(())
    }

    /// Whether anything is told to accounts at all.
    pub fn any_account_channel(&self) -> bool {
        self.email.is_some() || self.webhook.is_some()
    }
}

/// How long to wait after failed attempt number `attempt` (1 for the
/// first): 30 s, doubling, at most an hour.
pub fn retry_delay(attempt: u32) -> jiff::SignedDuration {
    let doublings = attempt.saturating_sub(1).min(7);
    let seconds = (30_i64 << doublings).min(3_600);
    jiff::SignedDuration::from_secs(seconds)
}

/// What an account is told, in every channel's form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Stable per cause: a receiver that sees an id twice has seen the
    /// message before.
    pub id: String,
    pub account: String,
    /// `standing.change` or `standing.notice`.
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Timestamp,
    pub subject: String,
    pub text: String,
    /// The change or notice as stratus recorded it.
    pub data: serde_json::Value,
}

fn about(subject: &Subject) -> String {
    match subject {
        Subject::Account => "All services of your account".to_owned(),
        Subject::Server(name) => format!("Your server {name}"),
    }
}

fn termination_cause(cause: TerminationCause) -> &'static str {
    match cause {
        TerminationCause::NonPayment => "an unpaid invoice",
        TerminationCause::Abuse => "abuse",
        TerminationCause::Operator => "a decision of the provider",
    }
}

/// What the customer is told when a copy of its storage `name` (`id`) no
/// longer matched its checksum and was rewritten from the other (R26), or
/// was found lost on both. `repairs` makes each occurrence its own message.
pub fn storage_damage(
    account: &str,
    id: &str,
    name: &str,
    repairs: u32,
    repaired: bool,
    detail: &str,
    at: Timestamp,
) -> Message {
    let (kind, subject) = if repaired {
        (
            "storage.repaired",
            format!("Your storage {name}: a copy was repaired"),
        )
    } else {
        (
            "storage.lost",
            format!("Your storage {name}: both copies of its content are damaged"),
        )
    };
    Message {
        id: format!("storage/{id}:{kind}:{repairs}:{}", at.as_millisecond()),
        account: account.to_owned(),
        kind: kind.to_owned(),
        at,
        subject,
        text: format!(
            "{detail}.{}",
            if repaired {
                " Your data is unchanged: nothing needs doing."
            } else {
                " Restore one of its kept versions (POST /v1/storage/{id}/actions {\"type\": \"restore\"})."
            }
        ),
        data: serde_json::json!({ "storage": id, "name": name, "repaired": repaired, "detail": detail }),
    }
}

/// A LUKS disk was unplugged from its server (the server stopped, its
/// hypervisor restarted, or a suspension was lifted) and stays so until
/// its customer gives the key again: stratus keeps no key (R25).
pub fn storage_key_required(
    account: &str,
    id: &str,
    name: &str,
    server: &str,
    at: Timestamp,
) -> Message {
    Message {
        id: format!("storage/{id}:storage.key_required:{}", at.as_millisecond()),
        account: account.to_owned(),
        kind: "storage.key_required".to_owned(),
        at,
        subject: format!("Your storage {name} needs its key"),
        text: format!(
            "The encrypted disk {name} is not plugged into server {server}: its key is kept only while the server runs, and the server was started again, its hypervisor restarted, or a suspension was lifted. We never keep your key, so we cannot plug it in for you: attach it again with its key (POST /v1/storage/{id}/actions {{\"type\": \"attach\", \"server\": \"{server}\", \"key\": …}})."
        ),
        data: serde_json::json!({ "storage": id, "name": name, "server": server }),
    }
}

/// The message a change of an account's standing becomes; `None` for a
/// change only operators are told of.
pub fn for_change(account: &str, change: &Change) -> Option<Message> {
    let who = about(&change.subject);
    let (subject, text) = match &change.kind {
        ChangeKind::Suspended { reason } => (
            format!("{who} suspended {}", reason.describe()),
            format!(
                "{who} {} suspended {} since {}.",
                verb(&change.subject),
                reason.describe(),
                change.at
            ),
        ),
        ChangeKind::Lifted { reason } => (
            format!("Suspension {} lifted", reason.describe()),
            format!(
                "The suspension {} of {} was lifted at {}.",
                reason.describe(),
                lowercase_first(&who),
                change.at
            ),
        ),
        ChangeKind::TerminationScheduled { cause, at } => (
            format!("{who} will be terminated on {at}"),
            format!(
                "{who} will be terminated on {at} because of {}. Its data will be destroyed.",
                termination_cause(*cause)
            ),
        ),
        ChangeKind::Terminated { cause } => (
            format!("{who} was terminated"),
            format!(
                "{who} was terminated at {} because of {}.",
                change.at,
                termination_cause(*cause)
            ),
        ),
        ChangeKind::DataDestroyed => (
            "The data of your services was destroyed".to_owned(),
            format!(
                "The disks of every service of your account were destroyed at {}, as your terms provide for an invoice left unpaid.",
                change.at
            ),
        ),
        ChangeKind::Wiped => (
            format!("{who}'s data was destroyed"),
            format!(
                "The disk of {} was wiped at {}.",
                lowercase_first(&who),
                change.at
            ),
        ),
        ChangeKind::Restored => (
            format!("{who} was restored"),
            format!("{who} was provisioned again at {}.", change.at),
        ),
        ChangeKind::ReminderMissing { .. } => return None,
    };
    Some(Message {
        id: change.id.clone(),
        account: account.to_owned(),
        kind: "standing.change".to_owned(),
        at: change.at,
        subject,
        text,
        data: json!(change),
    })
}

/// The message a notice of a deadline ahead becomes.
pub fn for_notice(account: &str, notice: &Notice) -> Message {
    let deadline = notice.deadline;
    let (subject, text) = match &notice.upcoming {
        Upcoming::Suspension => (
            format!("Reminder: your services will be suspended on {deadline}"),
            format!(
                "An invoice of your account is overdue. Unless it is paid, every service of your account will be suspended on {deadline}."
            ),
        ),
        Upcoming::DataDestruction => (
            format!("Reminder: the data of your services will be destroyed on {deadline}"),
            format!(
                "Your account is suspended for non-payment. Unless every overdue invoice is paid, the disks of every service will be destroyed on {deadline}; they cannot be recovered afterwards."
            ),
        ),
        Upcoming::Termination { server } => (
            format!("Reminder: your server {server} will be terminated on {deadline}"),
            format!(
                "Your server {server} will be terminated on {deadline} and its disk destroyed."
            ),
        ),
    };
    Message {
        id: notice.id.clone(),
        account: account.to_owned(),
        kind: "standing.notice".to_owned(),
        at: notice.at,
        subject,
        text,
        data: json!(notice),
    }
}

fn verb(subject: &Subject) -> &'static str {
    match subject {
        Subject::Account => "are",
        Subject::Server(_) => "is",
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standing::{Cause, SuspensionReason};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + seconds).unwrap()
    }

    fn change(subject: Subject, kind: ChangeKind) -> Change {
        Change {
            id: "change-1".into(),
            at: at(0),
            subject,
            cause: Cause::Policy,
            kind,
        }
    }

    #[test]
    fn a_suspension_names_what_and_why() {
        let account = change(
            Subject::Account,
            ChangeKind::Suspended {
                reason: SuspensionReason::NonPayment,
            },
        );
        let message = for_change("acc-1", &account).unwrap();
        assert_eq!(
            message.subject,
            "All services of your account suspended for non-payment"
        );
        assert!(
            message
                .text
                .starts_with("All services of your account are suspended for non-payment since ")
        );
        assert_eq!(
            (message.id.as_str(), message.kind.as_str()),
            ("change-1", "standing.change")
        );
        assert_eq!(message.data["change"], "suspended");

        let lifted = change(
            Subject::Server("vs-1".into()),
            ChangeKind::Lifted {
                reason: SuspensionReason::Abuse,
            },
        );
        let message = for_change("acc-1", &lifted).unwrap();
        assert!(
            message
                .text
                .starts_with("The suspension for abuse of your server vs-1 was lifted"),
            "{}",
            message.text
        );
    }

    #[test]
    fn a_missing_reminder_is_for_operators_only() {
        let missing = change(
            Subject::Account,
            ChangeKind::ReminderMissing {
                invoice: "inv-1".into(),
            },
        );
        assert_eq!(for_change("acc-1", &missing), None);
    }

    #[test]
    fn a_notice_names_the_deadline() {
        let notice = Notice {
            id: "notice:1".into(),
            at: at(0),
            deadline: at(72 * 3600),
            upcoming: Upcoming::Termination {
                server: "vs-1".into(),
            },
        };
        let message = for_notice("acc-1", &notice);
        assert_eq!(
            message.subject,
            format!(
                "Reminder: your server vs-1 will be terminated on {}",
                at(72 * 3600)
            )
        );
        assert_eq!(message.kind, "standing.notice");
        assert_eq!(message.data["what"], "termination");
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        let waits: Vec<i64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn channels_are_checked_naming_the_key() {
        let parse = |yaml: &str| -> Result<(), String> {
            let n: Notifications = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
            n.validate().map_err(|(field, _)| field)
        };
        parse("email: {smtp: {host: smtp.example.net}, from: 'Hosting <noc@example.net>'}")
            .unwrap();
        parse("email: {smtp: {host: 127.0.0.1, port: 2525, tls: none}, from: noc@example.net}")
            .unwrap();
        parse("webhook: {url: 'https://hooks.example.net/stratus', secretFile: /etc/s}").unwrap();
        parse("webhook: {url: 'http://127.0.0.1:9000/h', secretFile: /etc/s}").unwrap();
        parse("billingWebhook: {url: 'http://[::1]:9000/h', secretFile: /etc/s}").unwrap();
        for (yaml, field) in [
            (
                "email: {smtp: {host: 'bad host'}, from: noc@example.net}",
                "notifications.email.smtp.host",
            ),
            (
                "email: {smtp: {host: smtp.example.net, tls: none}, from: noc@example.net}",
                "notifications.email.smtp.tls",
            ),
            (
                "email: {smtp: {host: smtp.example.net, port: 0}, from: noc@example.net}",
                "notifications.email.smtp.port",
            ),
            (
                "email: {smtp: {host: smtp.example.net, username: u}, from: noc@example.net}",
                "notifications.email.smtp.passwordFile",
            ),
            (
                "email: {smtp: {host: smtp.example.net}, from: 'Hosting <nobody>'}",
                "notifications.email.from",
            ),
            (
                "webhook: {url: 'http://hooks.example.net/h', secretFile: /etc/s}",
                "notifications.webhook.url",
            ),
            (
                "webhook: {url: 'https://user@hooks.example.net/h', secretFile: /etc/s}",
                "notifications.webhook.url",
            ),
            (
                "billingWebhook: {url: 'ftp://x', secretFile: /etc/s}",
                "notifications.billingWebhook.url",
            ),
            (
                "webhook: {url: 'https://hooks.example.net/h', secretFile: ''}",
                "notifications.webhook.secretFile",
            ),
            ("maxAttempts: 0", "notifications.maxAttempts"),
        ] {
            assert_eq!(parse(yaml), Err(field.to_owned()), "{yaml}");
        }
        assert!(
            parse("email: {smtp: {host: x.example}, from: a@b.example, cc: x}").is_err(),
            "unknown keys refused"
        );
    }
}
