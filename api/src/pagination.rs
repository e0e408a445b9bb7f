//! Cursor pagination: `?limit=N&cursor=C` → `{"items": [...], "next_cursor": C|null}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use stratus_store::ObjectPage;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
/// Longer than any cursor this API hands out.
const MAX_CURSOR_LEN: usize = 2048;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (1-500, default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Operators only: restrict to one account.
    pub account: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<usize, ApiError> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }

    /// The store's continue token inside `cursor`. Cursors wrap it in
    /// URL-safe base64 so clients can pass them back without escaping
    /// (the API server's own tokens hold `+`, `/` and `=`).
    pub fn store_cursor(&self) -> Result<Option<String>, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(None);
        };
        let invalid = || ApiError::bad_request("cursor", "cursor is not one this API handed out");
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        String::from_utf8(bytes).map(Some).map_err(|_| invalid())
    }

    /// The page size, for a store that reads one page at a time.
    pub fn store_limit(&self) -> Result<u32, ApiError> {
        // At most MAX_LIMIT (500): the cast cannot truncate.
        Ok(self.limit()? as u32)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page read from the store, its continue token as the cursor.
    pub fn from_store<S>(page: ObjectPage<S>, view: impl Fn(&S) -> T) -> Self {
        Self {
            items: page.items.iter().map(view).collect(),
            next_cursor: page
                .continue_token
                .map(|token| URL_SAFE_NO_PAD.encode(token)),
        }
    }
}

/// Pages through items sorted by `key`, strictly after the cursor: for the
/// short lists that are read whole anyway (hypervisors, an account's tokens).
pub fn paginate<T>(
    mut items: Vec<T>,
    query: &PageQuery,
    key: impl Fn(&T) -> String,
) -> Result<Page<T>, ApiError> {
    let limit = query.limit()?;
    items.sort_by_key(&key);
    if let Some(cursor) = &query.cursor {
        items.retain(|item| key(item).as_str() > cursor.as_str());
    }
    let next_cursor = (items.len() > limit).then(|| key(&items[limit - 1]));
    items.truncate(limit);
    Ok(Page { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_all_items_once() {
        let items: Vec<String> = (0..7).map(|i| format!("id-{i}")).collect();
        let mut query = PageQuery {
            limit: Some("3".into()),
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = paginate(items.clone(), &query, Clone::clone).unwrap();
            seen.extend(page.items);
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn cursors_carry_the_store_token_url_safe() {
        let page = Page::from_store(
            ObjectPage {
                items: vec![1, 2],
                continue_token: Some("eyJ2Ijoi+/=".to_owned()),
            },
            |n: &i32| n * 10,
        );
        assert_eq!(page.items, vec![10, 20]);
        let cursor = page.next_cursor.unwrap();
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let query = PageQuery {
            cursor: Some(cursor),
            ..Default::default()
        };
        assert_eq!(
            query.store_cursor().unwrap().as_deref(),
            Some("eyJ2Ijoi+/=")
        );
        for bad in ["not base64!", "_w", &"A".repeat(MAX_CURSOR_LEN + 4)] {
            let query = PageQuery {
                cursor: Some(bad.to_owned()),
                ..Default::default()
            };
            let err = query.store_cursor().unwrap_err();
            assert_eq!(err.details["field"], "cursor", "{bad}");
        }
    }

    #[test]
    fn bad_limits_name_the_parameter() {
        for bad in ["0", "501", "x", "-1"] {
            let query = PageQuery {
                limit: Some(bad.into()),
                ..Default::default()
            };
            let err = query.limit().unwrap_err();
            assert_eq!(err.details["field"], "limit");
        }
    }
}
