//! Facts about accounts, reported by the provider's billing system and its
//! operators (R1–R9, R18): recorded append-only with their evidence,
//! idempotent by the reporter's id, and acted on by the controller's
//! deadline runner at once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stratus_core::ids::{AccountId, TokenId};
use stratus_core::resources::VirtualServer;
use stratus_core::standing::{FactKind, TerminationCause};
use stratus_store::ledger::{
    AuditAction, AuditSubject, BillingEvent, NewFact, Position, Recorded, StoredFact, TokenScope,
};
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::state::ApiState;
use crate::views::millis_to_rfc3339;

/// Longest reporter id accepted.
const MAX_ID_LEN: usize = 128;
/// Most servers one maintenance report may name through a hypervisor.
const MAX_MAINTENANCE_SERVERS: usize = 10_000;

/// A fact as the reporter sends it: `{"id", "type", ...fields}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventBody {
    InvoiceOverdue {
        invoice_id: String,
        /// RFC 3339.
        due_at: String,
    },
    ReminderSent {
        invoice_id: String,
    },
    InvoicePaid {
        invoice_id: String,
    },
    AbuseReport {
        /// The server reported, or `ip` and `received_at`.
        server: Option<String>,
        ip: Option<String>,
        /// When the abuse was seen (RFC 3339): who held `ip` then is charged.
        received_at: Option<String>,
        /// A copy of the report.
        #[schema(value_type = Object)]
        evidence: Option<Value>,
    },
    AbuseRelease {
        server: String,
    },
    LegalHold {
        #[schema(value_type = Object)]
        evidence: Option<Value>,
    },
    LegalRelease {},
    KycIncomplete {},
    KycComplete {},
    Maintenance {
        /// One server, or every server on `hypervisor`.
        server: Option<String>,
        hypervisor: Option<String>,
        /// RFC 3339; now when absent.
        from: Option<String>,
        /// RFC 3339; `from` plus `policy.maintenance.defaultWindow` when absent.
        until: Option<String>,
    },
    /// One server, or one storage subscription (`storage`).
    Terminate {
        #[serde(default)]
        server: Option<String>,
        #[serde(default)]
        storage: Option<String>,
        /// `abuse`, `non_payment` or `operator`.
        #[schema(value_type = String)]
        reason: TerminationCause,
        /// `policy` (with `abuse.terminationNotice`) or `immediate`.
        notice: Notice,
    },
    Restore {
        server: String,
        /// `latest` (the server's newest copied backup) or the id of one of
        /// its backups or snapshots: its data comes back from it (R18).
        source: String,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    Policy,
    Immediate,
}

impl EventBody {
    /// Whether the billing system may report it (the rest is operators').
    fn is_billing(&self) -> bool {
        matches!(
            self,
            Self::InvoiceOverdue { .. } | Self::ReminderSent { .. } | Self::InvoicePaid { .. }
        )
    }
}

/// What became of a reported fact.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordedView {
    pub id: String,
    /// `recorded`, or `repeated`: the same report was recorded before and
    /// this is its first answer.
    pub result: String,
    /// Every account the fact was recorded for (one, except a hypervisor's
    /// maintenance).
    pub facts: Vec<FactView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FactView {
    pub id: String,
    pub account_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// As stratus reads it (servers resolved).
    #[schema(value_type = Object)]
    pub fact: Value,
    pub recorded_at: String,
}

impl From<&StoredFact> for FactView {
    fn from(stored: &StoredFact) -> Self {
        Self {
            id: stored.id.clone(),
            account_id: stored.account.clone(),
            kind: stored.kind.clone(),
            fact: stored.fact.clone(),
            recorded_at: millis_to_rfc3339(stored.recorded_at),
        }
    }
}

/// Reports a fact about one account. A server or address of another
/// account answers 422; the same id again answers the first result, the
/// same id with another body 422.
#[utoipa::path(post, path = "/v1/admin/accounts/{id}/events", tag = "accounts",
    params(("id" = String, Path)), request_body = Object,
    responses((status = 202, body = RecordedView), (status = 200, body = RecordedView),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn report_account_event(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    principal.require_billing()?;
    let account = AccountId::parse(&id)
        .ok_or_else(|| ApiError::malformed_id("account", &id, "acc-<16 hex digits>"))?;
    if state.accounts.get(None, account.as_str()).await?.is_none() {
        return Err(ApiError::not_found("account", account.as_str()));
    }
    report(&principal, &state, Some(&account), body).await
}

/// Reports a fact whose account stratus finds itself: an abuse report
/// naming an address and a time (the IP ledger says who held it then), a
/// hypervisor's maintenance (every account with a server on it), or any
/// fact naming a server.
#[utoipa::path(post, path = "/v1/admin/events", tag = "accounts", request_body = Object,
    responses((status = 202, body = RecordedView), (status = 200, body = RecordedView),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn report_event(
    principal: Principal,
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    principal.require_billing()?;
    report(&principal, &state, None, body).await
}

async fn report(
    principal: &Principal,
    state: &ApiState,
    account: Option<&AccountId>,
    body: Value,
) -> Result<Response, ApiError> {
    let mut fields = match body.clone() {
        Value::Object(fields) => fields,
        _ => return Err(ApiError::bad_request("body", "an event is a JSON object")),
    };
    let id = match fields.remove("id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err(ApiError::invalid("id", "id must be a string")),
        None => return Err(ApiError::invalid("id", "missing field `id`")),
    };
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "id",
            format!("id must be 1-{MAX_ID_LEN} visible ASCII characters"),
        ));
    }
    let event: EventBody = serde_json::from_value(Value::Object(fields)).map_err(event_error)?;
    if matches!(principal, Principal::Billing { .. }) && !event.is_billing() {
        return Err(ApiError::forbidden(
            "a billing token reports invoices, reminders and payments only",
        ));
    }
    let now = state.clock.now();
    let facts = resolve(state, account, &event, now).await?;
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let actor = principal.actor().to_string();
    let many = facts.len() > 1;
    let mut recorded = Vec::with_capacity(facts.len());
    let mut repeated = false;
    for (account, fact) in facts {
        let fact_id = if many {
            format!("{id}@{account}")
        } else {
            id.clone()
        };
        let fact_json =
            serde_json::to_value(&fact).map_err(|e| ApiError::internal(e.to_string()))?;
        let outcome = state
            .ledger
            .facts()
            .record(&NewFact {
                id: &fact_id,
                account: &account,
                kind: &kind,
                fact: &fact_json,
                body: &body,
                actor: &actor,
                recorded_at: now.as_millisecond(),
            })
            .await?;
        match outcome {
            // Recording a new fact made its account due at once.
            Recorded::New(stored) => {
                state
                    .audit(
                        principal.actor(),
                        AuditAction::AccountFact,
                        AuditSubject::Account(account.clone()),
                        json!({ "fact": stored.id, "type": kind, "report": body }),
                    )
                    .await;
                tracing::info!(fact = %stored.id, %account, %kind, "fact recorded");
                recorded.push(stored);
            }
            Recorded::Repeated(stored) => {
                repeated = true;
                recorded.push(stored);
            }
            Recorded::Conflicting(_) => {
                return Err(ApiError::invalid(
                    "id",
                    format!("the id {id:?} was already used for another report"),
                ));
            }
        }
    }
    let view = RecordedView {
        id,
        result: if repeated { "repeated" } else { "recorded" }.to_owned(),
        facts: recorded.iter().map(FactView::from).collect(),
    };
    let status = if repeated {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(view)).into_response())
}

/// serde's message names the field; the error's details do too.
fn event_error(error: serde_json::Error) -> ApiError {
    let message = error.to_string();
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| {
            let rest = message.split(prefix).nth(1)?;
            rest.split('`').next().map(str::to_owned)
        })
        .unwrap_or_else(|| {
            if message.contains("variant") || message.contains("`type`") {
                "type".to_owned()
            } else {
                "body".to_owned()
            }
        });
    ApiError::invalid(&field, message)
}

/// Evidence is kept as received: a copy of the report, text or an object.
fn check_evidence(evidence: Option<&Value>) -> Result<(), ApiError> {
    match evidence {
        None | Some(Value::String(_) | Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "evidence",
            "evidence is the report's text or an object",
        )),
    }
}

fn timestamp(field: &str, raw: &str) -> Result<Timestamp, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("{field} must be an RFC 3339 time such as 2026-03-03T14:02:00Z"),
        )
    })
}

fn invoice(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() || raw.len() > MAX_ID_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "invoice_id",
            format!("invoice_id must be 1-{MAX_ID_LEN} visible ASCII characters"),
        ));
    }
    Ok(raw.to_owned())
}

/// The server `name` and its account; with `account`, only a server of it.
async fn server_of(
    state: &ApiState,
    account: Option<&AccountId>,
    field: &str,
    name: &str,
) -> Result<(String, VirtualServer), ApiError> {
    let found: Vec<VirtualServer> = if stratus_core::ids::ServerId::parse(name).is_none() {
        Vec::new()
    } else {
        state.servers.find_by_name(name).await?
    };
    let server = one_of(found, account, field, "server", name)?;
    let owner = server.namespace().unwrap_or_default();
    if let Some(account) = account
        && owner != account.as_str()
    {
        return Err(ApiError::invalid(
            field,
            format!("the server {name} is not of the account {account}"),
        ));
    }
    Ok((owner, server))
}

/// The one object named `name`: in Kubernetes mode objects of several
/// accounts (namespaces) may share a name, so the account the report is
/// posted under picks it, and without one a shared name is refused as
/// ambiguous (never guessed: the wrong account would be suspended).
/// The backup a restore (R18) brings `server`'s data back from: `latest`
/// (its newest copied backup) or the id of one of its backups or snapshots,
/// copied; else 422 naming `source`. Held ones count: a destroyed server's
/// backups are held until it is restored.
async fn restore_source(
    state: &ApiState,
    account: &str,
    server: &str,
    source: &str,
) -> Result<String, ApiError> {
    use stratus_core::storage::{SnapshotState, snapshot_state};
    let source = source.trim();
    let copied: Vec<_> = state
        .storage
        .list(Some(account))
        .await?
        .items
        .into_iter()
        .filter(|s| {
            s.metadata.deletion_timestamp.is_none()
                && s.spec
                    .snapshot_of
                    .as_ref()
                    .is_some_and(|of| of.server == server)
                && snapshot_state(&s.spec, s.status.as_ref()).0 == SnapshotState::Ready
        })
        .collect();
    let found = if source == "latest" {
        copied
            .iter()
            .filter(|s| s.spec.snapshot_of.as_ref().is_some_and(|of| of.backup))
            .max_by_key(|s| s.spec.snapshot_of.as_ref().map_or(0, |of| of.version))
    } else {
        copied.iter().find(|s| s.name_any() == source)
    };
    found.map(|s| s.name_any()).ok_or_else(|| {
        ApiError::invalid(
            "source",
            format!(
                "{source:?} is not a copied backup or snapshot of server {server}: give `latest` or the id of one (GET /v1/servers/{{id}}/snapshots)"
            ),
        )
    })
}

fn one_of<K: kube::Resource>(
    found: Vec<K>,
    account: Option<&AccountId>,
    field: &str,
    what: &str,
    name: &str,
) -> Result<K, ApiError> {
    if found.len() > 1 {
        if let Some(account) = account {
            let ours = found
                .into_iter()
                .find(|o| o.meta().namespace.as_deref() == Some(account.as_str()));
            return ours.ok_or_else(|| {
                ApiError::invalid(
                    field,
                    format!("the {what} {name} is not of the account {account}"),
                )
            });
        }
        let mut accounts: Vec<String> = found
            .iter()
            .filter_map(|o| o.meta().namespace.clone())
            .collect();
        accounts.sort();
        return Err(ApiError::invalid(
            field,
            format!(
                "several accounts have a {what} named {name} ({}): report it under its account, POST /v1/admin/accounts/{{id}}/events",
                accounts.join(", ")
            ),
        ));
    }
    found
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::invalid(field, format!("no {what} {name:?}")))
}

/// The account and name of the storage subscription `name`, checked
/// against the path's account.
async fn storage_of(
    state: &ApiState,
    account: Option<&AccountId>,
    name: &str,
) -> Result<(String, String), ApiError> {
    let found = if stratus_core::ids::StorageId::parse(name).is_none() {
        Vec::new()
    } else {
        state.storage.find_by_name(name).await?
    };
    let subscription = one_of(found, account, "storage", "storage subscription", name)?;
    let owner = subscription.namespace().unwrap_or_default();
    if let Some(account) = account
        && owner != account.as_str()
    {
        return Err(ApiError::invalid(
            "storage",
            format!("the storage subscription {name} is not of the account {account}"),
        ));
    }
    Ok((owner, subscription.name_any()))
}

/// The fact(s) an event makes, by account: servers found, addresses
/// resolved to who held them, every account checked against the path's.
async fn resolve(
    state: &ApiState,
    account: Option<&AccountId>,
    event: &EventBody,
    now: Timestamp,
) -> Result<Vec<(String, FactKind)>, ApiError> {
    let account_only = |kind: FactKind| -> Result<Vec<(String, FactKind)>, ApiError> {
        let account = account.ok_or_else(|| {
            ApiError::invalid(
                "type",
                "this fact is about an account: POST it to /v1/admin/accounts/{id}/events",
            )
        })?;
        Ok(vec![(account.to_string(), kind)])
    };
    match event {
        EventBody::InvoiceOverdue { invoice_id, due_at } => {
            account_only(FactKind::InvoiceOverdue {
                invoice: invoice(invoice_id)?,
                due_at: timestamp("due_at", due_at)?,
            })
        }
        EventBody::ReminderSent { invoice_id } => account_only(FactKind::ReminderSent {
            invoice: invoice(invoice_id)?,
        }),
        EventBody::InvoicePaid { invoice_id } => account_only(FactKind::InvoicePaid {
            invoice: invoice(invoice_id)?,
        }),
        EventBody::LegalHold { evidence } => {
            check_evidence(evidence.as_ref())?;
            account_only(FactKind::LegalHold)
        }
        EventBody::LegalRelease {} => account_only(FactKind::LegalRelease),
        EventBody::KycIncomplete {} => account_only(FactKind::KycIncomplete),
        EventBody::KycComplete {} => account_only(FactKind::KycComplete),
        EventBody::AbuseReport {
            server,
            ip,
            received_at,
            evidence,
        } => {
            check_evidence(evidence.as_ref())?;
            let (owner, name) = match (server, ip) {
                (Some(server), None) => {
                    let (owner, found) = server_of(state, account, "server", server).await?;
                    (owner, found.name_any())
                }
                (None, Some(ip)) => {
                    abuser_of(state, account, ip, received_at.as_deref(), now).await?
                }
                _ => {
                    return Err(ApiError::invalid(
                        "server",
                        "an abuse report names either a server or an ip (with received_at)",
                    ));
                }
            };
            Ok(vec![(owner, FactKind::AbuseReport { server: name })])
        }
        EventBody::AbuseRelease { server } => {
            let (owner, found) = server_of(state, account, "server", server).await?;
            Ok(vec![(
                owner,
                FactKind::AbuseRelease {
                    server: found.name_any(),
                },
            )])
        }
        EventBody::Terminate {
            server,
            storage,
            reason,
            notice,
        } => {
            let (owner, name) = match (server, storage) {
                (Some(server), None) => {
                    let (owner, found) = server_of(state, account, "server", server).await?;
                    (owner, found.name_any())
                }
                (None, Some(storage)) => storage_of(state, account, storage).await?,
                _ => {
                    return Err(ApiError::invalid(
                        "server",
                        "a termination names either a server or a storage subscription",
                    ));
                }
            };
            Ok(vec![(
                owner,
                FactKind::Terminate {
                    server: name,
                    cause: *reason,
                    immediate: matches!(notice, Notice::Immediate),
                },
            )])
        }
        EventBody::Restore { server, source } => {
            if stratus_core::ids::ServerId::parse(server).is_none() {
                return Err(ApiError::invalid(
                    "server",
                    format!("{server:?} is not a server id"),
                ));
            }
            // Only a server whose record is kept can be brought back: a
            // restore of one that is gone, or going, would be accepted and
            // never carried out.
            let (owner, found) = server_of(state, account, "server", server).await?;
            if found.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::invalid(
                    "server",
                    format!("the server {server} is being deleted: nothing brings it back"),
                ));
            }
            let backup = restore_source(state, &owner, server, source).await?;
            Ok(vec![(
                owner,
                FactKind::Restore {
                    server: server.clone(),
                    source: Some(backup),
                },
            )])
        }
        EventBody::Maintenance {
            server,
            hypervisor,
            from,
            until,
        } => {
            let from = from
                .as_deref()
                .map(|f| timestamp("from", f))
                .transpose()?
                .unwrap_or(now);
            let until = match until {
                Some(until) => timestamp("until", until)?,
                None => state.config.policy.maintenance.default_window.after(from),
            };
            if until <= from {
                return Err(ApiError::invalid("until", "until must be after from"));
            }
            let servers = match (server, hypervisor) {
                (Some(server), None) => vec![server_of(state, account, "server", server).await?],
                (None, Some(hypervisor)) => servers_on(state, account, hypervisor).await?,
                _ => {
                    return Err(ApiError::invalid(
                        "server",
                        "a maintenance names either a server or a hypervisor",
                    ));
                }
            };
            let mut by_account: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (owner, server) in servers {
                by_account.entry(owner).or_default().push(server.name_any());
            }
            if by_account.is_empty() {
                return Err(ApiError::invalid(
                    "hypervisor",
                    "no server of this account is on that hypervisor",
                ));
            }
            Ok(by_account
                .into_iter()
                .map(|(owner, servers)| {
                    (
                        owner,
                        FactKind::Maintenance {
                            servers,
                            from,
                            until: Some(until),
                        },
                    )
                })
                .collect())
        }
    }
}

/// R22: the server and account that held `ip` when the abuse was seen.
async fn abuser_of(
    state: &ApiState,
    account: Option<&AccountId>,
    ip: &str,
    received_at: Option<&str>,
    now: Timestamp,
) -> Result<(String, String), ApiError> {
    let address: IpAddr = ip
        .parse()
        .map_err(|_| ApiError::invalid("ip", format!("{ip:?} is not an IP address")))?;
    let at = received_at
        .map(|at| timestamp("received_at", at))
        .transpose()?
        .unwrap_or(now);
    let holdings = super::ip::holdings_of(state, address, Some(at.as_millisecond())).await?;
    let holding = holdings.last().ok_or_else(|| {
        ApiError::invalid(
            "ip",
            format!("no server held {address} at {at} (see GET /v1/admin/ips/{address}/history)"),
        )
    })?;
    if let Some(account) = account
        && holding.account != account.as_str()
    {
        return Err(ApiError::invalid(
            "ip",
            format!("{address} was held by another account than {account} at {at}"),
        ));
    }
    let server = holding
        .subject
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((holding.account.clone(), server))
}

/// The servers placed on `hypervisor` (of `account` only, when given).
async fn servers_on(
    state: &ApiState,
    account: Option<&AccountId>,
    hypervisor: &str,
) -> Result<Vec<(String, VirtualServer)>, ApiError> {
    if state.hypervisors.get(None, hypervisor).await?.is_none() {
        return Err(ApiError::invalid(
            "hypervisor",
            format!("no hypervisor {hypervisor:?}"),
        ));
    }
    let servers = state
        .servers
        .list(account.map(AccountId::as_str))
        .await?
        .items;
    let on: Vec<(String, VirtualServer)> = servers
        .into_iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.hypervisor.as_ref())
                .is_some_and(|h| h.as_str() == hypervisor)
        })
        .map(|s| (s.namespace().unwrap_or_default(), s))
        .collect();
    if on.len() > MAX_MAINTENANCE_SERVERS {
        return Err(ApiError::invalid(
            "hypervisor",
            format!("more than {MAX_MAINTENANCE_SERVERS} servers on it: report them by account"),
        ));
    }
    Ok(on)
}

/// Most rows one page of billing events or audit trail holds.
const MAX_PAGE: u32 = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CursorQuery {
    /// The `next_cursor` of the previous page; absent or 0: from the first.
    pub since: Option<String>,
    /// Rows per page (1-1000, default 100).
    pub limit: Option<String>,
}

impl CursorQuery {
    pub(crate) fn cursor(&self) -> Result<i64, ApiError> {
        match &self.since {
            None => Ok(0),
            Some(raw) => raw.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
                ApiError::bad_request("since", "since is the next_cursor of an earlier page")
            }),
        }
    }

    /// The position among billing events or history entries (`0`, an id,
    /// or `XID.ID` as handed out on PostgreSQL).
    pub(crate) fn position(&self) -> Result<Position, ApiError> {
        match &self.since {
            None => Ok(Position::Start),
            Some(raw) => Position::parse(raw).ok_or_else(|| {
                ApiError::bad_request("since", "since is the next_cursor of an earlier page")
            }),
        }
    }

    pub(crate) fn limit(&self) -> Result<u32, ApiError> {
        match &self.limit {
            None => Ok(100),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request("limit", format!("limit must be from 1 to {MAX_PAGE}"))
                }),
        }
    }
}

/// A page read by cursor: store `next_cursor` and ask again with
/// `since=<next_cursor>` to see every row exactly once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CursorPage<T> {
    pub items: Vec<T>,
    /// Where the next page starts (the same cursor when nothing is new).
    pub next_cursor: String,
}

/// The outbound billing-events ledger, by cursor (operators and billing).
#[utoipa::path(get, path = "/v1/admin/billing-events", tag = "accounts", params(CursorQuery),
    responses((status = 200, body = CursorPage<BillingEvent>), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list_billing_events(
    principal: Principal,
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<CursorQuery>,
) -> Result<Json<CursorPage<BillingEvent>>, ApiError> {
    principal.require_billing()?;
    let cursor = query.position()?;
    let rows = state.ledger.charges().since(cursor, query.limit()?).await?;
    let next_cursor = rows.last().map_or(cursor, |(c, _)| *c).to_string();
    Ok(Json(CursorPage {
        items: rows
            .into_iter()
            .map(|(cursor, charge)| charge.into_event(cursor))
            .collect(),
        next_cursor,
    }))
}

/// One row of an account's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEntryView {
    pub cursor: String,
    pub at: String,
    /// `token:<id>`, `controller` (policy and convergence) or a command.
    pub actor: String,
    /// e.g. `account.fact`, `standing.change`, `server.stop`.
    pub action: String,
    /// `account/<id>` or `server/<account>/<id>`.
    pub subject: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// The whole audit trail of an account and its servers, with causes and
/// evidence (R10; operators only).
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/audit", tag = "accounts",
    params(("id" = String, Path), CursorQuery),
    responses((status = 200, body = CursorPage<HistoryEntryView>), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn account_audit(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<CursorQuery>,
) -> Result<Json<CursorPage<HistoryEntryView>>, ApiError> {
    principal.require_admin()?;
    let account = AccountId::parse(&id)
        .ok_or_else(|| ApiError::malformed_id("account", &id, "acc-<16 hex digits>"))?;
    history(&state, &account, &query, |entry| entry.detail.clone()).await
}

/// The caller's own account's history: suspensions and their lifting,
/// terminations, the facts reported (their type, never their evidence) and
/// what was done to its servers.
#[utoipa::path(get, path = "/v1/account/events", tag = "accounts", params(CursorQuery),
    responses((status = 200, body = CursorPage<HistoryEntryView>), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn own_account_events(
    principal: Principal,
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<CursorQuery>,
) -> Result<Json<CursorPage<HistoryEntryView>>, ApiError> {
    let account = principal.account()?.clone();
    let mut page = history(&state, &account, &query, |entry| match entry.action {
        AuditAction::StandingChange => json!({ "change": entry.detail["change"] }),
        AuditAction::AccountFact => json!({ "type": entry.detail["type"] }),
        // How each copy of its attached disks was taken, and what it cost
        // its guest; a skipped one and why.
        AuditAction::StorageSnapshot => json!({
            "version": entry.detail["version"],
            "method": entry.detail["method"],
            "guest_paused_ms": entry.detail["guest_paused_ms"],
        }),
        AuditAction::StorageSnapshotSkipped => json!({ "reason": entry.detail["reason"] }),
        // A server's snapshot: which, how its disk was copied and what it
        // cost the guest, or why it was not.
        AuditAction::ServerSnapshot
        | AuditAction::ServerSnapshotDelete
        | AuditAction::ServerRestore => json!({ "snapshot": entry.detail["snapshot"] }),
        AuditAction::ServerSnapshotCaptured => json!({
            "server": entry.detail["server"],
            "bytes": entry.detail["bytes"],
            "sha256": entry.detail["sha256"],
            "method": entry.detail["method"],
            "guest_paused_ms": entry.detail["guest_paused_ms"],
        }),
        AuditAction::ServerSnapshotFailed => {
            json!({ "server": entry.detail["server"], "reason": entry.detail["reason"] })
        }
        _ => json!({}),
    })
    .await?;
    // A customer sees its own tokens by id; every other principal only by
    // its role, never by a token id of the provider's.
    let mut roles: HashMap<String, &'static str> = HashMap::new();
    for item in &mut page.items {
        let shown = match roles.get(&item.actor) {
            Some(shown) => *shown,
            None => {
                let shown = actor_as_seen_by(&state, &account, &item.actor).await?;
                roles.insert(item.actor.clone(), shown);
                shown
            }
        };
        if !shown.is_empty() {
            item.actor = shown.to_owned();
        }
    }
    Ok(page)
}

/// How `actor` appears in `account`'s own history: empty when as it is
/// (one of the account's own tokens, or the controller), else the role
/// that stands for it (`operator`, `billing`).
async fn actor_as_seen_by(
    state: &ApiState,
    account: &AccountId,
    actor: &str,
) -> Result<&'static str, ApiError> {
    if actor == "controller" {
        return Ok("");
    }
    let Some(token) = actor.strip_prefix("token:").and_then(TokenId::parse) else {
        // A command at the operator's console (`stratus up`, …).
        return Ok("operator");
    };
    let record = state.ledger.tokens().get(&token).await?;
    Ok(match record {
        Some(record) if record.account_id.as_ref() == Some(account) => "",
        Some(record) if record.scope == TokenScope::Billing => "billing",
        _ => "operator",
    })
}

async fn history(
    state: &ApiState,
    account: &AccountId,
    query: &CursorQuery,
    shown: impl Fn(&stratus_store::ledger::AuditEntry) -> Value,
) -> Result<Json<CursorPage<HistoryEntryView>>, ApiError> {
    if state.accounts.get(None, account.as_str()).await?.is_none() {
        return Err(ApiError::not_found("account", account.as_str()));
    }
    let cursor = query.position()?;
    let rows = state
        .ledger
        .audit()
        .account_page(account, cursor, query.limit()?)
        .await?;
    let next_cursor = rows.last().map_or(cursor, |(c, _)| *c).to_string();
    Ok(Json(CursorPage {
        items: rows
            .iter()
            .map(|(cursor, entry)| HistoryEntryView {
                cursor: cursor.to_string(),
                at: millis_to_rfc3339(entry.at),
                actor: entry.actor.to_string(),
                action: entry.action.as_str().to_owned(),
                subject: entry.subject.to_string(),
                detail: shown(entry),
            })
            .collect(),
        next_cursor,
    }))
}
