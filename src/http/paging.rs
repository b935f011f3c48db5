//! The contract's paging convention, for every listing: `limit` 1–1000
//! (100 when absent), an opaque `cursor` taken from the previous page's
//! `next`, and `next` absent on the last page.

use super::problem::ApiError;

/// Items per page: `limit` is 1 to this.
pub const LIMIT_MAX: i64 = 1000;
/// Items per page when `limit` is absent.
pub const LIMIT_DEFAULT: i64 = 100;

/// The page size asked for.
pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    let limit = raw.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be from 1 to {LIMIT_MAX}"
        )));
    }
    Ok(limit)
}

/// A cursor that is a row's sequence number (positive), if one was given.
pub fn seq_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|raw| {
        raw.parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| ApiError::Validation("cursor must be a `next` from a page".into()))
    })
    .transpose()
}

/// `next` of a page of `rows`: the last row's cursor when the page is
/// full (there may be more), else none.
pub fn next<T>(rows: &[T], limit: i64, cursor_of: impl Fn(&T) -> String) -> Option<String> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(cursor_of))
        .flatten()
}

/// A filter that must be one of `allowed` when given.
pub fn one_of<'a>(
    name: &str,
    value: Option<&'a str>,
    allowed: &[&str],
) -> Result<Option<&'a str>, ApiError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(ApiError::Validation(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        v => Ok(v),
    }
}
