//! Notifications out (issue 9): what accounts are told of their standing,
//! by e-mail over SMTP and by a signed webhook, through the durable outbox
//! of the ledger; and the billing events pushed to the provider's billing
//! webhook as they are recorded.
//!
//! Queueing is keyed by cause (`{account}/{message id}/{channel}`), so a
//! standing worked out again after a restart queues nothing twice.
//! Delivery is at least once: a sender killed between the receiver's
//! answer and the ledger's update sends again when its claim runs out, and
//! every message carries its stable id (the e-mail's `Message-ID`, the
//! webhook's `Stratus-Webhook-Id`) so the receiver recognises it.
//!
//! Webhook signature: `Stratus-Signature: t=<unix seconds>,v1=<hex>`
//! where `<hex>` is HMAC-SHA256 with the shared secret over
//! `"<t>.<body>"`. A receiver recomputes it over the raw body, compares in
//! constant time, and refuses a `t` more than five minutes from its clock.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use ring::hmac;
use rustls_platform_verifier::BuilderVerifierExt;
use stratus_core::notices::{self, EmailChannel, Message, Notifications, SmtpTls};
use stratus_store::ledger::{Channel, NewNotification, Notification};
use stratus_store::private_files::read_private_file;
use tokio::sync::watch;

use crate::context::Context;
use crate::error::ControllerError;
use crate::runtime;

/// A message about something older than this when first worked out is
/// not queued: enabling notifications on a running installation does not
/// mail out its history.
const HORIZON: SignedDuration = SignedDuration::from_hours(7 * 24);
/// How long a claimed notification is left to its sender before another
/// attempt may take it.
const CLAIM: SignedDuration = SignedDuration::from_secs(120);
/// Notifications claimed per query, and sent at once.
const BATCH: u32 = 64;
const CONCURRENCY: usize = 8;
/// Billing events per webhook call.
const BILLING_BATCH: u32 = 100;
/// The feed position of the billing webhook.
const BILLING_FEED: &str = "billing_webhook";
/// A receiver's answer kept in an error, at most.
const ANSWER_CHARS: usize = 300;
/// Secrets shorter than this are guessable.
const MIN_SECRET_BYTES: usize = 16;

/// Which channels are configured, for queueing.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    email: bool,
    webhook_url: Option<String>,
}

impl Outbox {
    pub fn new(config: &Notifications) -> Self {
        Self {
            email: config.email.is_some(),
            webhook_url: config.webhook.as_ref().map(|w| w.url.clone()),
        }
    }

    /// Queues each of `messages` for `account` (contact address `email`)
    /// in every configured channel, once; the count newly queued.
    pub async fn queue(
        &self,
        ctx: &Context,
        account: &str,
        email: &str,
        messages: Vec<Message>,
        now: Timestamp,
    ) -> Result<usize, ControllerError> {
        let mut queued = 0;
        for message in messages {
            if message.at < now - HORIZON {
                continue;
            }
            let body = serde_json::to_value(&message)
                .map_err(|e| ControllerError::Malformed(message.id.clone(), e.to_string()))?;
            let channels = [
                (Channel::Email, self.email.then(|| email.to_owned())),
                (Channel::Webhook, self.webhook_url.clone()),
            ];
            for (channel, recipient) in channels {
                let Some(recipient) = recipient else { continue };
                let new = NewNotification {
                    key: format!("{account}/{}/{}", message.id, channel.as_str()),
                    account: account.to_owned(),
                    channel,
                    recipient,
                    message: body.clone(),
                    created_at: now.as_millisecond(),
                };
                if ctx.ledger.notifications().enqueue(&new).await? {
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }
}

/// Sends e-mail through the configured SMTP server.
struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl EmailSender {
    fn new(config: &EmailChannel) -> Result<Self, ControllerError> {
        let smtp = &config.smtp;
        let refused = |e: lettre::transport::smtp::Error| {
            ControllerError::Config(format!("notifications.email.smtp: {e}"))
        };
        let builder = match smtp.tls {
            SmtpTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(refused)?
            }
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host).map_err(refused)?
            }
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        let mut builder = builder
            .port(smtp.port())
            .timeout(Some(Duration::from_secs(30)));
        if let (Some(username), Some(file)) = (&smtp.username, &smtp.password_file) {
            let password = read_secret(file, "notifications.email.smtp.passwordFile")?;
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        let from = config
            .from
            .parse()
            .map_err(|e| ControllerError::Config(format!("notifications.email.from: {e}")))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    async fn send(&self, key: &str, to: &str, message: &Message) -> Result<(), String> {
        let to: lettre::message::Mailbox = to
            .parse()
            .map_err(|e| format!("recipient {to:?} is not an address: {e}"))?;
        let domain = notices::mailbox_address(&self.from.to_string())
            .rsplit('@')
            .next()
            .unwrap_or("stratus")
            .to_owned();
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .message_id(Some(format!("<{}@{domain}>", digest_hex(key))))
            .header(ContentType::TEXT_PLAIN)
            .body(message.text.clone())
            .map_err(|e| format!("cannot build the e-mail: {e}"))?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// Posts signed JSON to webhooks.
struct WebhookSender {
    http: reqwest::Client,
    key: hmac::Key,
}

impl WebhookSender {
    fn new(secret_file: &str, key_name: &str) -> Result<Self, ControllerError> {
        let secret = read_secret(secret_file, key_name)?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ControllerError::Config(format!(
                "{key_name}: the secret must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| ControllerError::Config(format!("{key_name}: TLS: {e}")))?
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| ControllerError::Config(format!("{key_name}: HTTP client: {e}")))?;
        Ok(Self {
            http,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        })
    }

    async fn post(&self, url: &str, id: &str, body: Vec<u8>, now: Timestamp) -> Result<(), String> {
        let signature = signature(&self.key, now.as_second(), &body);
        let response = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Stratus-Webhook-Id", id)
            .header("Stratus-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = response.text().await.unwrap_or_default();
        let answer: String = answer.chars().take(ANSWER_CHARS).collect();
        Err(format!("webhook answered {status}: {answer}"))
    }
}

/// `t=<seconds>,v1=<hex HMAC-SHA256 of "<seconds>.<body>">`.
pub fn signature(key: &hmac::Key, seconds: i64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(seconds.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("t={seconds},v1={}", hex::encode(context.sign().as_ref()))
}

fn digest_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn read_secret(file: &str, key_name: &str) -> Result<String, ControllerError> {
    let secret = read_private_file(Path::new(file))
        .map_err(|e| ControllerError::Config(format!("{key_name}: {e}")))?;
    Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
}

/// How one attempt at a notification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retrying,
    /// Given up after the last attempt.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
    /// Billing events the billing webhook took.
    pub billing_events: usize,
}

/// When the billing webhook is next tried after a failure.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Timestamp>,
}

/// Delivers the outbox and pushes the billing feed; runs on the leader.
pub struct Notifier {
    ctx: Context,
    email: Option<EmailSender>,
    webhook: Option<WebhookSender>,
    billing: Option<(String, WebhookSender)>,
    max_attempts: u32,
    poll: Duration,
    billing_backoff: Mutex<Backoff>,
}

impl Notifier {
    /// Reads the channels' secrets; a missing or world-readable secret
    /// file refuses to start, naming the key.
    pub fn new(
        ctx: Context,
        config: &Notifications,
        poll: Duration,
    ) -> Result<Self, ControllerError> {
        let email = config.email.as_ref().map(EmailSender::new).transpose()?;
        let webhook = config
            .webhook
            .as_ref()
            .map(|w| WebhookSender::new(&w.secret_file, "notifications.webhook.secretFile"))
            .transpose()?;
        let billing = config
            .billing_webhook
            .as_ref()
            .map(|w| {
                WebhookSender::new(&w.secret_file, "notifications.billingWebhook.secretFile")
                    .map(|sender| (w.url.clone(), sender))
            })
            .transpose()?;
        Ok(Self {
            ctx,
            email,
            webhook,
            billing,
            max_attempts: config.max_attempts,
            poll,
            billing_backoff: Mutex::default(),
        })
    }

    /// Runs until `shutdown` says stop.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        runtime::every("notification", self.poll, shutdown, || self.pass()).await;
    }

    /// Delivers every notification due now, then pushes new billing events.
    pub async fn pass(&self) -> Result<DeliveryReport, ControllerError> {
        let mut report = DeliveryReport::default();
        loop {
            let now = self.ctx.clock.now();
            let claimed = self
                .ctx
                .ledger
                .notifications()
                .claim_due(now.as_millisecond(), (now + CLAIM).as_millisecond(), BATCH)
                .await?;
            let batch = claimed.len();
            let outcomes: Vec<Result<Outcome, ControllerError>> = futures::stream::iter(claimed)
                .map(|notification| async move { self.attempt(notification, now).await })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for outcome in outcomes {
                match outcome? {
                    Outcome::Delivered => report.delivered += 1,
                    Outcome::Retrying => report.retrying += 1,
                    Outcome::Failed => report.failed += 1,
                }
            }
            if batch < BATCH as usize {
                break;
            }
        }
        report.billing_events = self.push_billing().await?;
        Ok(report)
    }

    /// One attempt at `notification`, recorded.
    #[tracing::instrument(skip_all, fields(notification = %notification.key, attempt = notification.attempts))]
    async fn attempt(
        &self,
        notification: Notification,
        now: Timestamp,
    ) -> Result<Outcome, ControllerError> {
        let outbox = self.ctx.ledger.notifications();
        let channel = notification.channel.as_str();
        let outcome = self.send(&notification, now).await;
        let done = self.ctx.clock.now();
        let outcome = match outcome {
            Ok(()) => {
                outbox
                    .delivered(notification.id, done.as_millisecond())
                    .await?;
                tracing::info!(recipient = %notification.recipient, "notification delivered");
                Outcome::Delivered
            }
            Err(error) if notification.attempts < self.max_attempts => {
                let retry_at = done + notices::retry_delay(notification.attempts);
                outbox
                    .attempt_failed(notification.id, &error, Some(retry_at.as_millisecond()))
                    .await?;
                tracing::warn!(%error, %retry_at, "notification not delivered; trying again");
                Outcome::Retrying
            }
            Err(error) => {
                outbox.attempt_failed(notification.id, &error, None).await?;
                tracing::error!(%error, "notification given up after every attempt; an operator can queue it again");
                Outcome::Failed
            }
        };
        self.ctx.metrics.delivery(channel, outcome.as_str());
        Ok(outcome)
    }

    async fn send(&self, notification: &Notification, now: Timestamp) -> Result<(), String> {
        let message: Message = serde_json::from_value(notification.message.clone())
            .map_err(|e| format!("the queued message does not parse: {e}"))?;
        match notification.channel {
            Channel::Email => match &self.email {
                Some(sender) => {
                    sender
                        .send(&notification.key, &notification.recipient, &message)
                        .await
                }
                None => Err("e-mail is no longer configured".into()),
            },
            Channel::Webhook => match &self.webhook {
                Some(sender) => {
                    let body = serde_json::to_vec(&notification.message)
                        .map_err(|e| format!("cannot encode the message: {e}"))?;
                    sender
                        .post(&notification.recipient, &message.id, body, now)
                        .await
                }
                None => Err("the webhook is no longer configured".into()),
            },
        }
    }

    fn billing_backoff(&self) -> MutexGuard<'_, Backoff> {
        self.billing_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes the billing events recorded since the feed's position, a
    /// batch per call, moving the position on each success; the count
    /// pushed. A failure waits as a notification's retry does.
    async fn push_billing(&self) -> Result<usize, ControllerError> {
        let Some((url, sender)) = &self.billing else {
            return Ok(0);
        };
        let now = self.ctx.clock.now();
        if self
            .billing_backoff()
            .until
            .is_some_and(|until| now < until)
        {
            return Ok(0);
        }
        let outbox = self.ctx.ledger.notifications();
        let mut pushed = 0;
        loop {
            let position = outbox.feed_position(BILLING_FEED).await?;
            let rows = self
                .ctx
                .ledger
                .charges()
                .since(position, BILLING_BATCH)
                .await?;
            let Some(last) = rows.last().map(|(cursor, _)| *cursor) else {
                return Ok(pushed);
            };
            let count = rows.len();
            let events: Vec<_> = rows
                .into_iter()
                .map(|(cursor, charge)| charge.into_event(cursor))
                .collect();
            let body = serde_json::to_vec(
                &serde_json::json!({ "events": events, "next_cursor": last.to_string() }),
            )
            .map_err(|e| ControllerError::Malformed(BILLING_FEED.into(), e.to_string()))?;
            let id = format!("billing-events:{position}-{last}");
            match sender.post(url, &id, body, now).await {
                Ok(()) => {
                    *self.billing_backoff() = Backoff::default();
                    outbox.advance_feed(BILLING_FEED, last).await?;
                    self.ctx.metrics.delivery("billing_webhook", "delivered");
                    pushed += count;
                    if count < BILLING_BATCH as usize {
                        return Ok(pushed);
                    }
                }
                Err(error) => {
                    let retry_at = {
                        let mut backoff = self.billing_backoff();
                        backoff.failures += 1;
                        let retry_at = now + notices::retry_delay(backoff.failures);
                        backoff.until = Some(retry_at);
                        retry_at
                    };
                    self.ctx.metrics.delivery("billing_webhook", "retrying");
                    tracing::warn!(%error, %retry_at, %position, "billing events not taken by the billing webhook; trying again");
                    return Ok(pushed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented recipe, recomputed independently of `signature`.
    #[test]
    fn the_signature_is_hmac_sha256_over_time_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let body = br#"{"id":"n-1"}"#;
        let header = signature(&key, 1_780_000_000, body);
        let expected = hmac::sign(&key, b"1780000000.{\"id\":\"n-1\"}");
        assert_eq!(
            header,
            format!("t=1780000000,v1={}", hex::encode(expected.as_ref()))
        );
        assert_eq!(header.len(), "t=1780000000,v1=".len() + 64);
    }
}
