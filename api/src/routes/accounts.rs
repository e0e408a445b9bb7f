use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kube::ResourceExt;
use kube::core::ObjectMeta;
use serde_json::json;
use stratus_core::ids::AccountId;
use stratus_core::ids::TokenId;
use stratus_core::quota::Quota;
use stratus_core::resources::{Account, AccountSpec};
use stratus_core::validate;
use stratus_store::ledger::{AuditAction, AuditSubject, TokenRecord, TokenScope};

use crate::auth::{Principal, issue_token};
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::{Page, PageQuery, paginate};
use crate::state::ApiState;
use crate::views::{
    AccountView, CreateAccount, CreateOperatorToken, CreateToken, IssuedToken, QuotaBody, TokenView,
};

/// Opens a customer account (operators).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccount,
    responses((status = 201, body = AccountView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_account(
    principal: Principal,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    principal.require_admin()?;
    if !validate::is_display_name(&request.name) {
        return Err(ApiError::invalid(
            "name",
            "name must be 1-200 characters without control characters",
        ));
    }
    if !validate::is_email(&request.email) {
        return Err(ApiError::invalid(
            "email",
            format!("{:?} is not a valid e-mail address", request.email),
        ));
    }
    let id = AccountId::from_random(state.random_u64()?);
    let account = Account {
        metadata: ObjectMeta {
            name: Some(id.to_string()),
            ..Default::default()
        },
        spec: AccountSpec {
            display_name: request.name.trim().to_owned(),
            email: request.email.clone(),
            quota: None,
        },
        status: None,
    };
    // The account's resources live in a namespace of its own.
    state.accounts.ensure_namespace(id.as_str()).await?;
    let created = state.accounts.create(&account).await?;
    state
        .audit(
            principal.actor(),
            AuditAction::AccountCreate,
            AuditSubject::account(&id),
            json!({ "email": request.email }),
        )
        .await;
    tracing::info!(account = %id, "account opened");
    Ok((StatusCode::CREATED, Json(AccountView::from(&created))))
}

/// Lists accounts (operators).
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(PageQuery),
    responses((status = 200, body = Page<AccountView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_accounts(
    principal: Principal,
    State(state): State<ApiState>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<AccountView>>, ApiError> {
    principal.require_admin()?;
    if query.account.is_some() {
        return Err(ApiError::bad_request(
            "account",
            "accounts are listed whole; show one with GET /v1/accounts/{id}",
        ));
    }
    let page = state
        .accounts
        .list_page(None, query.store_limit()?, query.store_cursor()?.as_deref())
        .await?;
    Ok(Json(Page::from_store(page, |a| AccountView::from(a))))
}

/// Shows an account (operators, or a token of that account).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path)),
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_account(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let id = account_id(&id)?;
    if let Principal::Customer { account_id, .. } = &principal
        && *account_id != id
    {
        return Err(ApiError::not_found("account", id.as_str()));
    }
    let account = state
        .accounts
        .get(None, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("account", id.as_str()))?;
    Ok(Json(account_with_quota(&state, &account).await?))
}

/// The caller's own account (a customer token): its state, why it is
/// suspended, its quota and what it holds against it.
#[utoipa::path(get, path = "/v1/account", tag = "accounts",
    responses((status = 200, body = AccountView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn own_account(
    principal: Principal,
    State(state): State<ApiState>,
) -> Result<Json<AccountView>, ApiError> {
    let id = principal.account()?;
    let account = state
        .accounts
        .get(None, id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("account", id.as_str()))?;
    Ok(Json(account_with_quota(&state, &account).await?))
}

/// One account with its quota and what it holds.
async fn account_with_quota(state: &ApiState, account: &Account) -> Result<AccountView, ApiError> {
    let usage = state.ledger.quotas().usage(&account.name_any()).await?;
    Ok(AccountView {
        quota: Some(state.quota_of(account).into()),
        usage: Some(usage.into()),
        ..AccountView::from(account)
    })
}

/// Sets an account's own quota (operators), replacing the one it had; keys
/// left out take the provider's defaults. Servers already held stay; new
/// orders must fit.
#[utoipa::path(put, path = "/v1/admin/accounts/{id}/quota", tag = "accounts", params(("id" = String, Path)), request_body = QuotaBody,
    responses((status = 200, body = AccountView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_quota(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<QuotaBody>,
) -> Result<Json<AccountView>, ApiError> {
    principal.require_admin()?;
    let id = account_id(&id)?;
    let quota = Quota::from(request);
    let updated = state
        .accounts
        .update(None, id.as_str(), |account| {
            let changed = account.spec.quota != Some(quota);
            account.spec.quota = Some(quota);
            changed
        })
        .await?
        .ok_or_else(|| ApiError::not_found("account", id.as_str()))?;
    state
        .audit(
            principal.actor(),
            AuditAction::AccountQuota,
            AuditSubject::account(&id),
            json!({ "quota": request }),
        )
        .await;
    tracing::info!(account = %id, ?quota, "account quota set");
    Ok(Json(account_with_quota(&state, &updated).await?))
}

/// Issues an API token for an account (operators). The token is shown once.
#[utoipa::path(post, path = "/v1/accounts/{id}/tokens", tag = "accounts", params(("id" = String, Path)), request_body = CreateToken,
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_token(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    principal.require_admin()?;
    let account_id = account_id(&id)?;
    if state.accounts.get(None, &id).await?.is_none() {
        return Err(ApiError::not_found("account", &id));
    }
    let name = token_name(&request.name)?;
    let (record, token) =
        issue_token(&state, Some(&account_id), name, TokenScope::Customer).await?;
    state
        .audit(
            principal.actor(),
            AuditAction::TokenIssue,
            AuditSubject::account(&account_id),
            json!({ "token_id": record.id, "name": name }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(issued(&record, token))))
}

fn issued(record: &TokenRecord, token: String) -> IssuedToken {
    IssuedToken {
        id: record.id.to_string(),
        name: record.name.clone(),
        account_id: record.account_id.as_ref().map(ToString::to_string),
        token,
        role: record.scope.role().to_owned(),
        created_at: TokenView::from(record).created_at,
    }
}

/// A token's name as given: 1-100 characters, no control characters.
fn token_name(raw: &str) -> Result<&str, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "name must be 1-100 characters without control characters",
        ));
    }
    Ok(name)
}

/// Issues an operator token with a role (operators): `operator` may do
/// everything, `billing` only what the provider's billing system needs.
/// The token is shown once.
#[utoipa::path(post, path = "/v1/admin/tokens", tag = "accounts", request_body = CreateOperatorToken,
    responses((status = 201, body = IssuedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn create_operator_token(
    principal: Principal,
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<CreateOperatorToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    principal.require_admin()?;
    let scope = match request.role.as_str() {
        "operator" => TokenScope::Admin,
        "billing" => TokenScope::Billing,
        _ => return Err(ApiError::invalid("role", "role is operator or billing")),
    };
    let name = token_name(&request.name)?;
    let (record, token) = issue_token(&state, None, name, scope).await?;
    state
        .audit(
            principal.actor(),
            AuditAction::TokenIssue,
            AuditSubject::Operators,
            json!({ "token_id": record.id, "name": name, "role": scope.role() }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(issued(&record, token))))
}

/// Lists an account's tokens, without their secrets (operators).
#[utoipa::path(get, path = "/v1/accounts/{id}/tokens", tag = "accounts", params(("id" = String, Path), PageQuery),
    responses((status = 200, body = Page<TokenView>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_tokens(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page<TokenView>>, ApiError> {
    principal.require_admin()?;
    let account_id = account_id(&id)?;
    if state.accounts.get(None, &id).await?.is_none() {
        return Err(ApiError::not_found("account", &id));
    }
    let tokens = state.ledger.tokens().of_account(&account_id).await?;
    let views = tokens.iter().map(TokenView::from).collect();
    Ok(Json(paginate(views, &query, |t: &TokenView| t.id.clone())?))
}

/// Revokes a token at once (operators, or any token of the same account).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "accounts", params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    principal: Principal,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let token_id = TokenId::parse(&id)
        .ok_or_else(|| ApiError::malformed_id("token", &id, "tok-<16 hex digits>"))?;
    // Before any lookup: a billing token learns nothing of which ids exist.
    if let Principal::Billing { .. } = &principal {
        return Err(ApiError::forbidden(
            "a billing token revokes no token: an operator or the account's own token does",
        ));
    }
    let record = state
        .ledger
        .tokens()
        .get(&token_id)
        .await?
        .ok_or_else(|| ApiError::not_found("token", &id))?;
    // Only an operator, or a customer for its own account's tokens: the
    // billing system reports facts and reads charges, it revokes nothing.
    match &principal {
        Principal::Admin { .. } => {}
        Principal::Customer { account_id, .. }
            if record.account_id.as_ref() == Some(account_id) => {}
        Principal::Customer { .. } | Principal::Billing { .. } => {
            return Err(ApiError::not_found("token", &id));
        }
    }
    state
        .ledger
        .tokens()
        .revoke(&token_id, state.now_millis())
        .await?;
    let subject = record
        .account_id
        .as_ref()
        .map_or(AuditSubject::Operators, AuditSubject::account);
    state
        .audit(
            principal.actor(),
            AuditAction::TokenRevoke,
            subject,
            json!({ "token_id": token_id }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An account id from a request path.
fn account_id(raw: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(raw)
        .ok_or_else(|| ApiError::malformed_id("account", raw, "acc-<16 hex digits>"))
}
