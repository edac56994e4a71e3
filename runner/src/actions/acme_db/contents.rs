//! What the backup saw, checked: each restored table's rows and digest against the manifest's.
//! One comparison for every route (the scratch database before the swap, the one transaction
//! before its commit, SQLite's copy before it lands, the rehearsal), so each reports alike.

use crate::actions::artifact::{Contents, TableContents};

/// A comparison's outcome: one line per table, and the tables that differ.
#[derive(Debug, Default)]
pub struct Comparison {
    /// `public.items: 2000 rows, digest matches`, one per table compared (and per extra table).
    pub lines: Vec<String>,
    /// The lines of the tables that differ.
    pub differ: Vec<String>,
    pub tables: usize,
    pub rows: u64,
    /// Whether the manifest held digests (else rows only: digests were turned off).
    pub digests: bool,
}

impl Comparison {
    pub fn matches(&self) -> bool {
        self.differ.is_empty()
    }

    /// `2 table(s), 2050 rows: rows and digests match what the backup saw`.
    pub fn summary(&self) -> String {
        let what = if self.digests {
            "rows and digests"
        } else {
            "rows (no digests: the backup had them turned off)"
        };
        if self.matches() {
            format!(
                "{} table(s), {} rows: {what} match what the backup saw",
                self.tables, self.rows
            )
        } else {
            format!(
                "{} of {} table(s) differ from what the backup saw ({what} compared): {}",
                self.differ.len(),
                self.tables,
                self.differ
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
                    + if self.differ.len() > 5 { "; ..." } else { "" }
            )
        }
    }
}

fn key(t: &TableContents) -> (Option<&str>, &str) {
    (t.schema.as_deref(), t.name.as_str())
}

/// Compares `found` (the restored tables) with what the backup saw. `whole`: `found` is a
/// database that holds only what the dump restored (a scratch database), so a table there that the
/// manifest does not list is a difference when it holds rows (an empty one is said, not counted:
/// a table created after the backup's snapshot and before its dump read the catalog is dumped
/// empty). Otherwise (a live database, which keeps what the backup does not know) only the
/// manifest's tables are compared.
pub fn compare(expected: &Contents, found: &[TableContents], whole: bool) -> Comparison {
    let mut c = Comparison {
        digests: expected.tables.iter().any(|t| t.digest.is_some()),
        tables: expected.tables.len(),
        ..Comparison::default()
    };
    for want in &expected.tables {
        c.rows += want.rows;
        let label = want.label();
        let Some(got) = found.iter().find(|f| key(f) == key(want)) else {
            let line = format!(
                "{label}: missing: the restored database has no such table (the backup saw {} rows)",
                want.rows
            );
            c.lines.push(line.clone());
            c.differ.push(line);
            continue;
        };
        let mut wrong = Vec::new();
        if got.rows != want.rows {
            wrong.push(format!("{} rows, the backup saw {}", got.rows, want.rows));
        }
        let digest = match (&want.digest, &got.digest) {
            (None, _) => "no digest recorded",
            (Some(w), Some(g)) if w == g => "digest matches",
            (Some(_), _) => {
                wrong.push("digest differs".into());
                "digest differs"
            }
        };
        if wrong.is_empty() {
            c.lines
                .push(format!("{label}: {} rows, {digest}", got.rows));
        } else {
            let line = format!("{label}: {}", wrong.join(", "));
            c.lines.push(line.clone());
            c.differ.push(line);
        }
    }
    if whole {
        for extra in found
            .iter()
            .filter(|f| !expected.tables.iter().any(|t| key(t) == key(f)))
        {
            let label = extra.label();
            if extra.rows == 0 {
                c.lines
                    .push(format!("{label}: empty, and not in the manifest"));
            } else {
                let line = format!(
                    "{label}: {} rows in a table the backup did not see",
                    extra.rows
                );
                c.lines.push(line.clone());
                c.differ.push(line);
            }
        }
    }
    c
}

/// Prints a comparison, one line per table, as `label: LINE` on stderr.
pub fn report(label: &str, c: &Comparison) {
    for line in &c.lines {
        crate::note!("{label}: {line}");
    }
}

/// Sorts column names as every digest orders them: by their bytes, so that the order does not
/// depend on the table's column positions (a restored table inheriting from another may hold
/// them in another order) nor on a collation.
pub fn sorted(mut columns: Vec<String>) -> Vec<String> {
    columns.sort();
    columns
}

/// Decodes a name the server printed in hex (MariaDB's `HEX()`), so that no character in a name
/// can break the output's lines.
pub fn hex_decode(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: Option<&str>, name: &str, rows: u64, digest: Option<&str>) -> TableContents {
        TableContents {
            schema: schema.map(str::to_string),
            name: name.into(),
            rows,
            digest: digest.map(str::to_string),
        }
    }

    fn seen(tables: Vec<TableContents>) -> Contents {
        Contents {
            algorithm: "test".into(),
            snapshot: "test".into(),
            tables,
        }
    }

    #[test]
    fn equal_tables_match_and_say_so_per_table() {
        let want = seen(vec![
            t(Some("public"), "items", 2, Some("1.2")),
            t(Some("public"), "other", 0, Some("0.0")),
        ]);
        let c = compare(&want, &want.tables, true);
        assert!(c.matches());
        assert_eq!(
            c.lines,
            [
                "public.items: 2 rows, digest matches",
                "public.other: 0 rows, digest matches"
            ]
        );
        assert_eq!(
            c.summary(),
            "2 table(s), 2 rows: rows and digests match what the backup saw"
        );
    }

    #[test]
    fn a_changed_digest_a_count_a_missing_table_and_an_extra_one_with_rows_differ() {
        let want = seen(vec![
            t(None, "items", 2, Some("1.2")),
            t(None, "other", 3, Some("3.3")),
            t(None, "gone", 1, Some("9.9")),
        ]);
        let found = vec![
            t(None, "items", 2, Some("1.3")),
            t(None, "other", 4, Some("3.3")),
            t(None, "added", 5, Some("5.5")),
            t(None, "empty", 0, Some("0.0")),
        ];
        let c = compare(&want, &found, true);
        assert_eq!(
            c.differ,
            [
                "items: digest differs",
                "other: 4 rows, the backup saw 3",
                "gone: missing: the restored database has no such table (the backup saw 1 rows)",
                "added: 5 rows in a table the backup did not see",
            ]
        );
        assert!(c
            .lines
            .contains(&"empty: empty, and not in the manifest".to_string()));
        // A live database keeps what the backup does not know: only the manifest's tables.
        let live = compare(&want, &found, false);
        assert_eq!(live.differ.len(), 3);
    }

    #[test]
    fn without_digests_rows_alone_are_compared() {
        let want = seen(vec![t(None, "items", 2, None)]);
        let c = compare(&want, &[t(None, "items", 2, Some("7.7"))], true);
        assert!(c.matches());
        assert_eq!(c.lines, ["items: 2 rows, no digest recorded"]);
        assert!(c.summary().contains("no digests"), "{}", c.summary());
    }

    #[test]
    fn hex_names_decode() {
        assert_eq!(hex_decode("6974656d73").as_deref(), Some("items"));
        assert_eq!(hex_decode("6"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
