//! Bulk stock import: NDJSON lines of counts, each applied as its own
//! `PUT …/locations/{location}` would be (lua/set_stock.lua, journaled with
//! the operator and the request), streamed and bounded:
//! - the body is read chunk by chunk and never kept whole; a line longer
//!   than `IMPORT_LINE_BYTES_MAX` fails alone and is skipped to its end;
//! - lines are applied `IMPORT_CHUNK_LINES` at a time, the lines of one SKU
//!   in their order and different SKUs at once (`IMPORT_CONCURRENCY`), so
//!   the last line for a location wins as it would one request at a time;
//! - at most `admin.import_lines_max` lines; the first line past it fails
//!   with `too-many-lines` and nothing after it is read;
//! - a bad line fails alone, named by its 1-based number, with its code.
//!
//! With an `Idempotency-Key`, each line's operation id derives from the
//! account, key, line number and text (so a command re-sent by the client
//! library, or the same import retried after a dropped connection, sets the
//! same counts once), and the result is kept in the journal with the body's
//! digest: the same key and body again answer that result and change
//! nothing; another body is refused.

use std::collections::HashMap;

use axum::body::Bytes;
use futures_util::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Inventory;
use crate::{
    auth::Caller,
    inventory::{IdempotencyKey, Location, Sku},
    journal::JournalError,
    redis::calls::{AdminReply, Staff, StockCounts},
};

/// The longest line read (bytes); longer ones fail alone.
pub const IMPORT_LINE_BYTES_MAX: usize = 4_096;
/// Lines read before they are applied together.
pub const IMPORT_CHUNK_LINES: usize = 256;
/// SKUs of one chunk written at once.
pub const IMPORT_CONCURRENCY: usize = 32;

/// One line as it must read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    sku: String,
    #[serde(default)]
    location: Option<String>,
    on_hand: i64,
    #[serde(default)]
    safety_stock: i64,
    #[serde(default)]
    low_stock_threshold: i64,
    #[serde(default)]
    backorder_limit: i64,
}

/// A line that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedImportLine {
    /// 1-based line number in the body.
    pub line: usize,
    /// A problem code: `validation-failed`, `forbidden`, `unknown-sku` (a
    /// seller's line for a SKU it does not own), `insufficient-stock`,
    /// `line-too-long`, `too-many-lines`, `sku-recovering` or `unavailable`.
    pub code: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    pub applied: usize,
    pub failed: Vec<FailedImportLine>,
}

/// What an import came to.
#[derive(Debug)]
pub enum Imported {
    Done(ImportReport),
    /// The same key and body were imported before: that result.
    Replayed(ImportReport),
    /// The key was used with another body.
    KeyReused,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the request body: {0}")]
    Body(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A line read from the body: its number and text, or why it is unusable.
enum Read {
    Line(usize, String),
    Failed(FailedImportLine),
}

/// Splits a body into lines without holding more than one line (bounded by
/// `IMPORT_LINE_BYTES_MAX`) and one chunk; blank lines are skipped. Feeds
/// the body's bytes into `digest` as they pass.
struct Lines {
    pending: Vec<u8>,
    number: usize,
    /// The current line grew past the limit: drop bytes to its end.
    skipping: bool,
}

impl Lines {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            number: 0,
            skipping: false,
        }
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Read>) {
        for part in chunk.split_inclusive(|b| *b == b'\n') {
            let ends = part.last() == Some(&b'\n');
            let body = if ends { &part[..part.len() - 1] } else { part };
            if !self.skipping {
                self.pending.extend_from_slice(body);
                if self.pending.len() > IMPORT_LINE_BYTES_MAX {
                    self.skipping = true;
                    self.pending = Vec::new();
                }
            }
            if ends {
                self.end_line(out);
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<Read>) {
        self.number += 1;
        if std::mem::take(&mut self.skipping) {
            out.push(Read::Failed(FailedImportLine {
                line: self.number,
                code: "line-too-long".into(),
                detail: format!("a line holds at most {IMPORT_LINE_BYTES_MAX} bytes"),
            }));
            return;
        }
        let raw = std::mem::take(&mut self.pending);
        match String::from_utf8(raw) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => out.push(Read::Line(self.number, text)),
            Err(_) => out.push(Read::Failed(validation(self.number, "not UTF-8".into()))),
        }
    }

    fn finish(&mut self, out: &mut Vec<Read>) {
        if self.skipping || !self.pending.is_empty() {
            self.end_line(out);
        }
    }
}

fn validation(line: usize, detail: String) -> FailedImportLine {
    FailedImportLine {
        line,
        code: "validation-failed".into(),
        detail,
    }
}

/// A line ready to apply.
struct Parsed {
    number: usize,
    sku: Sku,
    location: Location,
    counts: StockCounts,
    op_id: String,
}

pub struct Importer<'a> {
    pub inventory: &'a Inventory,
    pub caller: &'a Caller,
    pub request_id: &'a str,
    pub key: Option<&'a IdempotencyKey>,
    pub lines_max: usize,
}

impl Importer<'_> {
    fn parse(&self, number: usize, text: &str) -> Result<Parsed, FailedImportLine> {
        let line: ImportLine =
            serde_json::from_str(text).map_err(|e| validation(number, e.to_string()))?;
        let sku = Sku::parse(&line.sku).map_err(|e| validation(number, e.0))?;
        let location = Location::parse(line.location.as_deref().unwrap_or("default"))
            .map_err(|e| validation(number, e.0))?;
        let grants = &self.caller.grants;
        if !grants.writes_location(location.as_str()) && grants.seller_only().is_none() {
            return Err(FailedImportLine {
                line: number,
                code: "forbidden".into(),
                detail: format!("the token may not write stock at {location}"),
            });
        }
        let counts = StockCounts::parse(
            line.on_hand,
            line.safety_stock,
            line.low_stock_threshold,
            line.backorder_limit,
        )
        .map_err(|e| validation(number, e))?;
        let op_id = match self.key {
            Some(key) => {
                let parts = [
                    self.caller.account.as_str(),
                    key.as_str(),
                    &number.to_string(),
                    text,
                ];
                format!("import-{}", crate::inventory::digest_hex(&parts))
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        Ok(Parsed {
            number,
            sku,
            location,
            counts,
            op_id,
        })
    }

    async fn apply_one(&self, line: &Parsed) -> Result<(), FailedImportLine> {
        let staff = Staff {
            actor: &self.caller.account,
            request_id: self.request_id,
        };
        let fail = |code: &str, detail: String| FailedImportLine {
            line: line.number,
            code: code.into(),
            detail,
        };
        // A seller's line names one of its own SKUs, or none it can see.
        if let Some(seller) = self.caller.grants.seller_only() {
            let owner = self.inventory.seller_of(&line.sku).await;
            match owner {
                Ok(Some(owner)) if owner == seller.as_str() => {}
                Ok(_) => return Err(fail("unknown-sku", format!("no SKU {}", line.sku))),
                Err(_) => {
                    return Err(fail(
                        "unavailable",
                        "redis did not answer; retry the import".into(),
                    ));
                }
            }
        }
        let reply = self
            .inventory
            .set_stock(
                &line.sku,
                &line.location,
                line.counts,
                None,
                &staff,
                &line.op_id,
            )
            .await;
        match reply {
            Ok(AdminReply::Ok { .. }) => Ok(()),
            Ok(AdminReply::InsufficientStock {
                available,
                reserved,
            }) => Err(fail(
                "insufficient-stock",
                format!("{reserved} units are held; {available} would be available"),
            )),
            Ok(other) => Err(fail("validation-failed", format!("{other:?}"))),
            Err(crate::redis::RedisError::Fenced { .. }) => Err(fail(
                "sku-recovering",
                "the SKU is being rebuilt from the journal".into(),
            )),
            Err(_) => Err(fail(
                "unavailable",
                "redis did not answer; retry the import".into(),
            )),
        }
    }

    /// Applies a chunk: each SKU's lines in order, SKUs at once.
    async fn apply_chunk(&self, chunk: Vec<Parsed>, report: &mut ImportReport) {
        let mut by_sku: HashMap<Sku, Vec<Parsed>> = HashMap::new();
        for line in chunk {
            by_sku.entry(line.sku.clone()).or_default().push(line);
        }
        let results: Vec<Vec<Result<(), FailedImportLine>>> = stream::iter(by_sku.into_values())
            .map(|lines| async move {
                let mut out = Vec::with_capacity(lines.len());
                for line in &lines {
                    out.push(self.apply_one(line).await);
                }
                out
            })
            .buffer_unordered(IMPORT_CONCURRENCY)
            .collect()
            .await;
        for result in results.into_iter().flatten() {
            match result {
                Ok(()) => report.applied += 1,
                Err(failed) => report.failed.push(failed),
            }
        }
    }

    /// Reads the body and applies its lines (`apply` false: only reads it,
    /// for the digest of a replay). Returns the report and the body's digest.
    async fn run<S, E>(
        &self,
        mut body: S,
        apply: bool,
    ) -> Result<(ImportReport, String), ImportError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut report = ImportReport::default();
        let mut digest = Sha256::new();
        let mut lines = Lines::new();
        let mut read = Vec::new();
        let mut chunk = Vec::with_capacity(IMPORT_CHUNK_LINES);
        let mut seen = 0;
        let mut ended = false;
        while !ended {
            match body.next().await {
                Some(Ok(bytes)) => {
                    digest.update(&bytes);
                    lines.feed(&bytes, &mut read);
                }
                Some(Err(e)) => return Err(ImportError::Body(e.to_string())),
                None => {
                    lines.finish(&mut read);
                    ended = true;
                }
            }
            for r in read.drain(..) {
                if seen == self.lines_max {
                    let number = match &r {
                        Read::Line(n, _) => *n,
                        Read::Failed(f) => f.line,
                    };
                    report.failed.push(FailedImportLine {
                        line: number,
                        code: "too-many-lines".into(),
                        detail: format!(
                            "an import holds at most {} lines; this line and those after it were not applied",
                            self.lines_max
                        ),
                    });
                    ended = true;
                    break;
                }
                seen += 1;
                // A replay only reads the body for its digest.
                if !apply {
                    continue;
                }
                match r {
                    Read::Failed(f) => report.failed.push(f),
                    Read::Line(n, text) => match self.parse(n, &text) {
                        Ok(parsed) => chunk.push(parsed),
                        Err(f) => report.failed.push(f),
                    },
                }
            }
            if apply && (chunk.len() >= IMPORT_CHUNK_LINES || ended) {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(IMPORT_CHUNK_LINES));
                self.apply_chunk(full, &mut report).await;
            }
        }
        report.failed.sort_by_key(|f| f.line);
        let hex = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((report, hex))
    }

    /// Imports the body (see the module's rules).
    pub async fn import<S, E>(&self, body: S) -> Result<Imported, ImportError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let store = &self.inventory.journal.store;
        let account = self.caller.account.as_str();
        let Some(key) = self.key else {
            return Ok(Imported::Done(self.run(body, true).await?.0));
        };
        let earlier = store
            .stock_import(account, key.as_str())
            .await
            .map_err(JournalError::from)?;
        if let Some((digest, result)) = earlier {
            let (_, body_digest) = self.run(body, false).await?;
            if body_digest != digest {
                return Ok(Imported::KeyReused);
            }
            let report = serde_json::from_value(result).unwrap_or_default();
            return Ok(Imported::Replayed(report));
        }
        let (report, digest) = self.run(body, true).await?;
        let result = serde_json::to_value(&report).unwrap_or_default();
        store
            .save_stock_import(account, key.as_str(), &digest, &result)
            .await
            .map_err(JournalError::from)?;
        Ok(Imported::Done(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        for c in chunks {
            lines.feed(c, &mut out);
        }
        lines.finish(&mut out);
        out.into_iter()
            .map(|r| match r {
                Read::Line(n, t) => format!("{n}:{t}"),
                Read::Failed(f) => format!("{}:{}", f.line, f.code),
            })
            .collect()
    }

    #[test]
    fn lines_split_across_chunks_and_a_long_one_fails_alone() {
        assert_eq!(split(&[b"a\nb", b"c\n\nd"]), ["1:a", "2:bc", "4:d"]);
        let long = vec![b'x'; IMPORT_LINE_BYTES_MAX + 1];
        assert_eq!(
            split(&[b"a\n", &long, b"yy\nz\n"]),
            ["1:a", "2:line-too-long", "3:z"]
        );
        assert_eq!(split(&[&long]), ["1:line-too-long"]);
    }
}
