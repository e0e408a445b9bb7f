//! Cursor pagination: `?limit=N&cursor=C` → `{"items": [...], "next_cursor": C|null}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

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
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Pages through items sorted by `key`, strictly after the cursor.
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
