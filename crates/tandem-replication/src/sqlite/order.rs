//! The order in which the standby applies a batch.
//!
//! A batch holds the active node's changes in commit order, and applying them in that
//! order is always right. It costs one statement per run of changes of one table and
//! kind, though, and the runs are short when every transaction touches several tables
//! (the sample workload writes three tables per transaction, so a batch alternates
//! between them). Where the tables cannot reach each other, the batch is applied table
//! by table instead: the final state is the same and the runs are as long as the batch.
//!
//! Table by table is the same as commit order when, on this node:
//!
//! - no declared table has triggers other than tandem's (a trigger can read or write
//!   any table, so it would see another order);
//! - the foreign keys between the declared tables form no cycle (parents then go
//!   first, so every parent row a child row needs is there before the child row:
//!   parents only gain rows, see the next point);
//! - the batch deletes no row of a table that a foreign key refers to (a delete there
//!   cascades, sets NULL or is refused depending on the child rows present at that
//!   moment), and every foreign key refers to its parent's primary key (an upsert never
//!   changes a primary key, so it never fires an `ON UPDATE` action), and no parent's
//!   definition declares a `REPLACE` conflict clause (which deletes rows);
//! - within one table the changes keep their order, except that a delete moves to the
//!   table's front when no earlier change of the batch wrote its key: the row it
//!   removes is then the one that was there before the batch, and removing it earlier
//!   only frees unique values, and nothing refers to the table.
//!
//! When any condition fails the batch goes in commit order. Keys are compared
//! coarsely ([`key_identity`]): two keys SQLite might hold equal always compare equal
//! here, so a collation or a numeric conversion can only keep a delete in place.

use std::collections::HashSet;

use sqlx::sqlite::SqliteConnection;

use super::schema::TableInfo;
use super::value::Value;
use crate::error::{Error, Result};

/// What the foreign keys and triggers of this node allow, for the declared tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Links {
    /// Indices of the declared tables, parents first; `None` when every batch goes in
    /// commit order.
    pub(crate) order: Option<Vec<usize>>,
    /// Per declared table: whether a foreign key (of any table) refers to it.
    pub(crate) parent: Vec<bool>,
}

/// Reads the foreign keys, triggers and table definitions that decide [`Links`].
pub(crate) async fn load(conn: &mut SqliteConnection, tables: &[TableInfo]) -> Result<Links> {
    const READ: &str = "reading the foreign keys and triggers of the declared tables";
    let keys: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT lower(m.name), lower(f.\"table\"), lower(f.\"to\") \
         FROM sqlite_master AS m, pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db(READ))?;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT lower(tbl_name) FROM sqlite_master \
         WHERE type = 'trigger' AND name NOT LIKE '\\_tandem\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(Error::db(READ))?;
    let definitions: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT lower(name), sql FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut *conn)
            .await
            .map_err(Error::db(READ))?;
    let definition = |name: &str| {
        definitions
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, sql)| sql.as_deref())
            .unwrap_or_default()
            .to_ascii_uppercase()
    };
    let names: Vec<String> = tables.iter().map(|t| t.name.to_lowercase()).collect();
    let index = |name: &str| names.iter().position(|n| n == name);
    let parent: Vec<bool> = names
        .iter()
        .map(|n| keys.iter().any(|(_, p, _)| p == n))
        .collect();
    let mut free = triggers.iter().all(|t| index(t).is_none());
    // Every foreign key to a declared table must name the table's primary key, and
    // a parent must not replace rows.
    for (i, t) in tables.iter().enumerate() {
        if !parent[i] {
            continue;
        }
        let key: Vec<String> = t.key.iter().map(|k| k.to_lowercase()).collect();
        let by_key = keys
            .iter()
            .filter(|(_, p, _)| *p == names[i])
            .all(|(_, _, to)| to.as_ref().is_none_or(|c| key.contains(c)));
        free &= by_key && !definition(&names[i]).contains("REPLACE");
    }
    let edges: Vec<(usize, usize)> = keys
        .iter()
        .filter_map(|(child, p, _)| Some((index(child)?, index(p)?)))
        .filter(|(c, p)| c != p)
        .collect();
    let order = if free {
        parents_first(tables.len(), &edges)
    } else {
        None
    };
    Ok(Links { order, parent })
}

/// The tables `0..n` ordered so that every parent comes before its children, for
/// `edges` of (child, parent); `None` when the edges form a cycle. Ties keep the
/// declared order.
pub(crate) fn parents_first(n: usize, edges: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&t| {
            !placed[t]
                && edges
                    .iter()
                    .all(|&(child, parent)| child != t || placed[parent] || parent == t)
        })?;
        placed[next] = true;
        order.push(next);
    }
    Some(order)
}

/// One change of a batch as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Index of the declared table.
    pub(crate) table: usize,
    /// A delete (else an insert or update, applied as an upsert).
    pub(crate) delete: bool,
    /// The key's [`key_identity`].
    pub(crate) key: String,
}

/// The order to apply `steps` in, as indices into `steps`; `None` for commit order.
pub(crate) fn plan(links: &Links, steps: &[Step]) -> Option<Vec<usize>> {
    let order = links.order.as_ref()?;
    if steps.len() < 2
        || steps
            .iter()
            .any(|s| s.delete && links.parent.get(s.table).is_none_or(|p| *p))
    {
        return None;
    }
    let mut front: Vec<Vec<usize>> = vec![Vec::new(); links.parent.len()];
    let mut rest: Vec<Vec<usize>> = vec![Vec::new(); links.parent.len()];
    let mut written: HashSet<(usize, &str)> = HashSet::new();
    for (i, s) in steps.iter().enumerate() {
        if s.table >= links.parent.len() {
            return None;
        }
        if s.delete && !written.contains(&(s.table, s.key.as_str())) {
            front[s.table].push(i);
        } else {
            if !s.delete {
                written.insert((s.table, s.key.as_str()));
            }
            rest[s.table].push(i);
        }
    }
    let mut out = Vec::with_capacity(steps.len());
    for &t in order {
        out.append(&mut front[t]);
        out.append(&mut rest[t]);
    }
    (out.len() == steps.len()).then_some(out)
}

/// A key's identity for [`plan`], coarser than SQLite's equality: numbers compare by
/// value whatever their storage class, and text ignores ASCII and Unicode case and
/// trailing spaces (the `NOCASE` and `RTRIM` collations), so keys SQLite holds equal
/// never differ here.
pub(crate) fn key_identity(values: &[Value]) -> String {
    let mut out = String::new();
    for v in values {
        match v {
            Value::Null => out.push_str("\0null"),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => out.push_str(&number(*i as f64)),
            Value::Real(r) => out.push_str(&number(*r)),
            Value::Text(t) => out.push_str(&t.trim_end_matches(' ').to_lowercase()),
            Value::Blob(b) => out.push_str(&hex::encode(b)),
        }
        out.push('\u{1}');
    }
    out
}

fn number(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn links(order: Option<Vec<usize>>, parent: Vec<bool>) -> Links {
        Links { order, parent }
    }

    fn step(table: usize, delete: bool, key: u8) -> Step {
        Step {
            table,
            delete,
            key: key_identity(&[Value::Int(i64::from(key))]),
        }
    }

    #[test]
    fn a_batch_over_three_tables_goes_table_by_table_with_deletes_first() {
        // Tables 0 <- 1 <- 2 (2 refers to 1, 1 to 0); only 2's rows are deleted.
        let l = links(Some(vec![0, 1, 2]), vec![true, true, false]);
        let steps = [
            step(2, false, 1),
            step(0, false, 1),
            step(1, false, 1),
            step(2, true, 9),
            step(2, false, 2),
            step(2, true, 1),
        ];
        // The delete of 9 moves to the front of table 2; the delete of 1 follows the
        // upsert of 1 and stays behind it.
        assert_eq!(plan(&l, &steps), Some(vec![1, 2, 3, 0, 4, 5]));
    }

    #[test]
    fn a_delete_of_a_parent_row_keeps_commit_order() {
        let l = links(Some(vec![0, 1]), vec![true, false]);
        assert_eq!(plan(&l, &[step(1, false, 1), step(0, true, 1)]), None);
        assert_eq!(plan(&links(None, vec![false]), &[step(0, false, 1)]), None);
    }

    #[test]
    fn parents_come_first_and_a_cycle_is_refused() {
        assert_eq!(parents_first(3, &[(0, 2), (2, 1)]), Some(vec![1, 2, 0]));
        assert_eq!(parents_first(2, &[(0, 0)]), Some(vec![0, 1]));
        assert_eq!(parents_first(2, &[(0, 1), (1, 0)]), None);
    }

    #[test]
    fn keys_sqlite_may_hold_equal_have_one_identity() {
        assert_eq!(
            key_identity(&[Value::Int(1)]),
            key_identity(&[Value::Real(1.0)])
        );
        assert_eq!(
            key_identity(&[Value::Real(0.0)]),
            key_identity(&[Value::Real(-0.0)])
        );
        assert_eq!(
            key_identity(&[Value::Text("Ab ".into())]),
            key_identity(&[Value::Text("aB".into())])
        );
        assert_ne!(
            key_identity(&[Value::Int(1), Value::Int(2)]),
            key_identity(&[Value::Int(12)])
        );
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec((0usize..4, any::<bool>(), 0u8..6), 0..40).prop_map(|v| {
            v.into_iter()
                .map(|(t, d, k)| step(t, d, k))
                .collect::<Vec<_>>()
        })
    }

    proptest! {
        /// A plan applies every change once; within a table, the changes of one key keep
        /// their order and so do the upserts; tables follow the links' order; and there is
        /// no plan when a parent row is deleted.
        #[test]
        fn a_plan_keeps_what_the_final_state_depends_on(
            steps in steps(),
            parent in proptest::collection::vec(any::<bool>(), 4),
            order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        ) {
            let l = links(Some(order.clone()), parent.clone());
            let Some(p) = plan(&l, &steps) else {
                prop_assert!(
                    steps.len() < 2 || steps.iter().any(|s| s.delete && parent[s.table])
                );
                return Ok(());
            };
            let mut sorted = p.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..steps.len()).collect::<Vec<_>>());
            let rank = |t: usize| order.iter().position(|&o| o == t).unwrap();
            for w in p.windows(2) {
                prop_assert!(rank(steps[w[0]].table) <= rank(steps[w[1]].table));
            }
            let at = |i: usize| p.iter().position(|&x| x == i).unwrap();
            for i in 0..steps.len() {
                for j in i + 1..steps.len() {
                    let (a, b) = (&steps[i], &steps[j]);
                    let same_key = a.table == b.table && a.key == b.key;
                    let both_upserts = a.table == b.table && !a.delete && !b.delete;
                    if same_key || both_upserts {
                        prop_assert!(at(i) < at(j), "{i} and {j} swapped in {p:?}");
                    }
                }
            }
        }
    }
}
