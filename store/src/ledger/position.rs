//! Where a reader of an append-only ledger table (billing charges, the
//! audit log) stands, so that a reader resuming from the last position it
//! saw sees every row exactly once.
//!
//! On SQLite rows become visible in the order of their ids (one writer
//! commits at a time), so the position is the id, written as an integer.
//! On PostgreSQL ids are handed out before commit, so a row with a smaller
//! id can become visible after a larger one: the position is the writing
//! transaction and the id, `"{xid}.{id}"`, and only rows of transactions
//! older than every one still running are shown, a set that never grows
//! below a position once seen. An integer position handed out before
//! (the id alone) still works there: the rows after that id and those
//! written after it was handed out, then written positions; a row written
//! concurrently with the last one it covered may be shown once more (never
//! skipped), recognisable by its stable id.
//!
//! Positions on PostgreSQL hold transaction ids of the cluster that wrote
//! the rows: a dump restored into another cluster (whose counter starts
//! lower) needs its readers' stored positions reset (README, *Upgrading*).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::Backend;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Position {
    /// Before the first row.
    #[default]
    Start,
    /// After the row with this id (SQLite's position; on PostgreSQL a
    /// position handed out before written positions existed).
    Id(i64),
    /// After row `id`, written by transaction `writer` (PostgreSQL).
    Written { writer: i64, id: i64 },
}

/// The SQL pieces that read a table after a position.
pub(crate) struct Paging {
    /// A select expression naming the row's writer `writer`.
    pub writer: &'static str,
    /// The condition: after the position, and final once visible.
    pub after: String,
    /// The order of positions.
    pub order: &'static str,
}

impl Position {
    /// Reads a position this ledger handed out (`0`, `N`, or `XID.N`).
    pub fn parse(raw: &str) -> Option<Self> {
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<i64>().ok())
                .flatten()
        };
        match raw.split_once('.') {
            None => match number(raw)? {
                0 => Some(Self::Start),
                id => Some(Self::Id(id)),
            },
            Some((writer, id)) => Some(Self::Written {
                writer: number(writer)?,
                id: number(id)?,
            }),
        }
    }

    /// How to read the rows of `table` after this position, its values
    /// bound from parameter `$first` on (the values, in order).
    pub(crate) fn paging(self, backend: Backend, table: &str, first: usize) -> (Paging, Vec<i64>) {
        let (a, b) = (first, first + 1);
        match backend {
            Backend::Sqlite => {
                let id = match self {
                    Self::Start => 0,
                    Self::Id(id) | Self::Written { id, .. } => id,
                };
                let paging = Paging {
                    writer: "0 AS writer",
                    after: format!("id > ${a}"),
                    order: "id",
                };
                (paging, vec![id])
            }
            Backend::Postgres => {
                let (after, binds) = match self {
                    Self::Start => ("TRUE".to_owned(), vec![]),
                    // An id handed out before written positions covered
                    // every row up to it that was visible then; one with a
                    // smaller id still being written was not, and its
                    // writer is younger than that id's: both come after.
                    Self::Id(id) => (
                        format!(
                            "(id > ${a} OR (writer_xid, id) > \
                             ((SELECT p.writer_xid FROM {table} p WHERE p.id = ${a}), ${a}))"
                        ),
                        vec![id],
                    ),
                    Self::Written { writer, id } => (
                        format!("(writer_xid, id) > (CAST(CAST(${a} AS TEXT) AS xid8), ${b})"),
                        vec![writer, id],
                    ),
                };
                let paging = Paging {
                    writer: "CAST(CAST(writer_xid AS TEXT) AS BIGINT) AS writer",
                    after: format!(
                        "writer_xid < pg_snapshot_xmin(pg_current_snapshot()) AND {after}"
                    ),
                    order: "writer_xid, id",
                };
                (paging, binds)
            }
        }
    }

    /// The position of a row read with [`Self::paging`] (columns `id` and
    /// `writer`).
    pub(crate) fn of_row(backend: Backend, row: &AnyRow) -> Result<Self> {
        let id: i64 = row.try_get("id")?;
        Ok(match backend {
            Backend::Sqlite => Self::Id(id),
            Backend::Postgres => Self::Written {
                writer: row.try_get("writer")?,
                id,
            },
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start => f.write_str("0"),
            Self::Id(id) => write!(f, "{id}"),
            Self::Written { writer, id } => write!(f, "{writer}.{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written_and_refuse_anything_else() {
        for position in [
            Position::Start,
            Position::Id(7),
            Position::Written { writer: 912, id: 7 },
        ] {
            assert_eq!(Position::parse(&position.to_string()), Some(position));
        }
        for bad in [
            "",
            "-4",
            "1.",
            ".1",
            "1.2.3",
            "x.1",
            "1 ",
            "99999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
        assert!(Position::Id(9) < Position::Written { writer: 1, id: 1 });
        assert!(Position::Written { writer: 1, id: 9 } < Position::Written { writer: 2, id: 1 });
    }
}
