//! The catalog: which tables and views exist, their columns, keys, watermarks and dependencies.
//! Persisted in the state store (one JSON entry per object, written synchronously) so it
//! survives restart. Tables and views share one namespace, as in PostgreSQL.
//!
//! Object ids are never reused: log records of a dropped table carry its old id and are skipped
//! on replay, so a new table of the same name never sees them.

pub mod keywords;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Result, sqlstate};
use crate::storage::state::StateStore;
use crate::types::{ObjectId, SqlType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub sql_type: SqlType,
    pub not_null: bool,
}

/// `WATERMARK FOR column AS expr`: stored now, used by the windowing issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkDef {
    pub column: String,
    /// The expression as SQL text, validated at CREATE time.
    pub expr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub id: ObjectId,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Indices into `columns`; empty when the table has no primary key.
    pub primary_key: Vec<usize>,
    pub append_only: bool,
    pub watermark: Option<WatermarkDef>,
    /// `WITH (late_rows = 'keep')`: the table late rows go to (`<name>_late`, created with
    /// it); without one they are dropped, and counted either way.
    #[serde(default)]
    pub late_rows_table: Option<ObjectId>,
    /// The source that feeds it (then SQL cannot write it, and it goes with the source).
    #[serde(default)]
    pub source: Option<ObjectId>,
}

impl TableDef {
    /// The Arrow schema of the table's rows.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.sql_type.to_arrow(), !c.not_null))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `CREATE TABLE` text equivalent to this definition (for `SHOW CREATE TABLE`).
    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = format!("{} {}", quote_ident(&c.name), c.sql_type);
                if c.not_null
                    && !self
                        .primary_key
                        .iter()
                        .any(|k| self.columns[*k].name == c.name)
                {
                    s.push_str(" NOT NULL");
                }
                s
            })
            .collect();
        if !self.primary_key.is_empty() {
            let cols: Vec<String> = self
                .primary_key
                .iter()
                .map(|i| quote_ident(&self.columns[*i].name))
                .collect();
            parts.push(format!("PRIMARY KEY ({})", cols.join(", ")));
        }
        if let Some(w) = &self.watermark {
            parts.push(format!(
                "WATERMARK FOR {} AS {}",
                quote_ident(&w.column),
                w.expr
            ));
        }
        let mut sql = format!(
            "CREATE TABLE {} ({})",
            quote_ident(&self.name),
            parts.join(", ")
        );
        if self.late_rows_table.is_some() {
            sql.push_str(" WITH (late_rows = 'keep')");
        }
        if self.append_only {
            sql.push_str(" APPEND ONLY");
        }
        sql
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does: unless it is lower case
/// letters, digits and underscores, not starting with a digit, and not a keyword other than an
/// unreserved one.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && keywords::category(name).is_none_or(|c| c == keywords::Category::Unreserved);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A view: its query text and output column names. A materialized view is kept current by a
/// dataflow; a plain view is inlined into the queries that read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    pub id: ObjectId,
    pub name: String,
    pub materialized: bool,
    /// The defining query, as SQL text (re-planned at start-up).
    pub query: String,
    /// Output column names (from the query, or the column list of the CREATE statement).
    pub columns: Vec<String>,
    /// Output column types, fixed when the view is created (as in PostgreSQL), for the
    /// catalogs (`pg_attribute`, `information_schema.columns`). Empty for views created before
    /// Eddy recorded them: those report their running schema (materialized) or `text`.
    #[serde(default)]
    pub column_types: Vec<SqlType>,
    /// Tables and views the query reads.
    pub depends_on: Vec<ObjectId>,
    /// `EMIT ON WINDOW CLOSE`: rows appear once, final, when the watermark passes them.
    #[serde(default)]
    pub emit_on_window_close: bool,
}

impl ViewDef {
    pub fn kind(&self) -> &'static str {
        if self.materialized {
            "materialized view"
        } else {
            "view"
        }
    }

    /// The CREATE statement that defines this view (for `SHOW CREATE`).
    pub fn create_sql(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "CREATE {}VIEW {} ({}) AS {}{}",
            if self.materialized {
                "MATERIALIZED "
            } else {
                ""
            },
            quote_ident(&self.name),
            cols.join(", "),
            self.query,
            if self.emit_on_window_close {
                " EMIT ON WINDOW CLOSE"
            } else {
                ""
            }
        )
    }
}

/// `CREATE SOURCE … FROM NEXMARK WITH (…)`, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NexmarkOptions {
    /// Stop after this many events (all three streams together); `None`: endless.
    pub max_events: Option<u64>,
    /// Events generated per second of wall time; 0: as fast as they can be written.
    pub events_per_second: u64,
    /// Which stream: each seed gives different (reproducible) data; 1 is Nexmark's own.
    pub seed: u64,
    /// Event time of the first event, ms since 1970 (default: when the source was created).
    pub start_time_ms: i64,
}

/// `CREATE SOURCE name FROM connector WITH (…)`: a connector feeding tables of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceDef {
    pub id: ObjectId,
    pub name: String,
    pub connector: Connector,
    /// The tables it feeds, in the connector's order.
    pub tables: Vec<ObjectId>,
}

/// What feeds a source, with its options resolved (defaults filled in at CREATE time, so a
/// restart goes on with the same ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "connector", rename_all = "snake_case")]
pub enum Connector {
    Nexmark(NexmarkOptions),
}

impl Connector {
    pub fn name(&self) -> &'static str {
        match self {
            Connector::Nexmark(_) => "nexmark",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    Table(TableDef),
    View(ViewDef),
    Source(SourceDef),
    Role(RoleDef),
    NextId { next: ObjectId },
}

/// A role (`CREATE ROLE`): who may log in, and with which password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDef {
    pub name: String,
    pub login: bool,
    pub superuser: bool,
    /// The SCRAM-SHA-256 verifier of its password, in PostgreSQL's format
    /// (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`); never the password.
    pub password: Option<String>,
}

/// The role every data directory has (PostgreSQL's bootstrap superuser), oid 10.
pub const BOOTSTRAP_ROLE: &str = "eddy";

fn role_key(name: &str) -> Vec<u8> {
    format!("role/{name}").into_bytes()
}

const NEXT_ID_KEY: &[u8] = b"meta/next_id";

fn table_key(id: ObjectId) -> Vec<u8> {
    format!("table/{id:020}").into_bytes()
}

fn source_key(id: ObjectId) -> Vec<u8> {
    format!("source/{id:020}").into_bytes()
}

fn view_key(id: ObjectId) -> Vec<u8> {
    format!("view/{id:020}").into_bytes()
}

/// The in-memory catalog. Mutations go through [`Catalog::create_table`] /
/// [`Catalog::drop_table`], which persist before changing memory.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tables: BTreeMap<String, Arc<TableDef>>,
    views: BTreeMap<String, Arc<ViewDef>>,
    sources: BTreeMap<String, Arc<SourceDef>>,
    /// Roles besides the bootstrap one, which is here once it has a password.
    roles: BTreeMap<String, Arc<RoleDef>>,
    next_id: ObjectId,
}

impl Catalog {
    pub fn load(store: &StateStore) -> Result<Catalog> {
        let mut catalog = Catalog {
            tables: BTreeMap::new(),
            views: BTreeMap::new(),
            sources: BTreeMap::new(),
            roles: BTreeMap::new(),
            next_id: 1,
        };
        for (key, value) in store.catalog_entries()? {
            let entry: Entry = serde_json::from_slice(&value).map_err(|e| {
                crate::err!(
                    sqlstate::DATA_CORRUPTED,
                    "catalog entry {} is unreadable: {e}",
                    String::from_utf8_lossy(&key)
                )
            })?;
            match entry {
                Entry::Table(t) => {
                    catalog.next_id = catalog.next_id.max(t.id + 1);
                    catalog.tables.insert(t.name.clone(), Arc::new(t));
                }
                Entry::View(v) => {
                    catalog.next_id = catalog.next_id.max(v.id + 1);
                    catalog.views.insert(v.name.clone(), Arc::new(v));
                }
                Entry::Source(s) => {
                    catalog.next_id = catalog.next_id.max(s.id + 1);
                    catalog.sources.insert(s.name.clone(), Arc::new(s));
                }
                Entry::Role(r) => {
                    catalog.roles.insert(r.name.clone(), Arc::new(r));
                }
                Entry::NextId { next } => catalog.next_id = catalog.next_id.max(next),
            }
        }
        Ok(catalog)
    }

    /// A role by name; the bootstrap role always exists (a superuser that may log in, with
    /// no password until one is set).
    pub fn role(&self, name: &str) -> Option<Arc<RoleDef>> {
        self.roles.get(name).cloned().or_else(|| {
            (name == BOOTSTRAP_ROLE).then(|| {
                Arc::new(RoleDef {
                    name: BOOTSTRAP_ROLE.to_string(),
                    login: true,
                    superuser: true,
                    password: None,
                })
            })
        })
    }

    /// Every role, the bootstrap one first.
    pub fn roles(&self) -> Vec<Arc<RoleDef>> {
        let mut out: Vec<Arc<RoleDef>> = self.role(BOOTSTRAP_ROLE).into_iter().collect();
        out.extend(
            self.roles
                .values()
                .filter(|r| r.name != BOOTSTRAP_ROLE)
                .cloned(),
        );
        out
    }

    /// Persists a role (new or changed) and puts it in place.
    pub fn put_role(&mut self, store: &StateStore, def: RoleDef) -> Result<()> {
        let json = serde_json::to_vec(&Entry::Role(def.clone()))
            .map_err(|e| crate::internal!("serializing the catalog: {e}"))?;
        store.write_catalog(&[(role_key(&def.name), json)], &[])?;
        self.roles.insert(def.name.clone(), Arc::new(def));
        Ok(())
    }

    pub fn drop_role(&mut self, store: &StateStore, name: &str) -> Result<()> {
        store.write_catalog(&[], &[role_key(name)])?;
        self.roles.remove(name);
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(name)
    }

    /// The tables view `id` reads, directly or through other views.
    pub fn tables_read(&self, id: ObjectId) -> Vec<ObjectId> {
        let mut out = Vec::new();
        let mut todo = vec![id];
        let mut seen = std::collections::HashSet::new();
        while let Some(next) = todo.pop() {
            if !seen.insert(next) {
                continue;
            }
            if self.table_by_id(next).is_some() {
                out.push(next);
            } else if let Some(v) = self.view_by_id(next) {
                todo.extend(v.depends_on.iter().copied());
            }
        }
        out
    }

    pub fn table_by_id(&self, id: ObjectId) -> Option<&Arc<TableDef>> {
        self.tables.values().find(|t| t.id == id)
    }

    pub fn tables(&self) -> impl Iterator<Item = &Arc<TableDef>> {
        self.tables.values()
    }

    pub fn source(&self, name: &str) -> Option<&Arc<SourceDef>> {
        self.sources.get(name)
    }

    pub fn source_by_id(&self, id: ObjectId) -> Option<&Arc<SourceDef>> {
        self.sources.values().find(|s| s.id == id)
    }

    /// Sources by name.
    pub fn sources(&self) -> impl Iterator<Item = &Arc<SourceDef>> {
        self.sources.values()
    }

    pub fn view(&self, name: &str) -> Option<&Arc<ViewDef>> {
        self.views.get(name)
    }

    pub fn view_by_id(&self, id: ObjectId) -> Option<&Arc<ViewDef>> {
        self.views.values().find(|v| v.id == id)
    }

    /// Views in creation order (a view comes after everything it reads).
    pub fn views(&self) -> Vec<Arc<ViewDef>> {
        let mut views: Vec<Arc<ViewDef>> = self.views.values().cloned().collect();
        views.sort_by_key(|v| v.id);
        views
    }

    /// Whether a table or view has this name.
    pub fn relation_exists(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.views.contains_key(name)
    }

    /// Views that read object `id` directly.
    pub fn dependents(&self, id: ObjectId) -> Vec<Arc<ViewDef>> {
        self.views()
            .into_iter()
            .filter(|v| v.depends_on.contains(&id))
            .collect()
    }

    /// Views that read object `id`, directly or through other views, in reverse creation
    /// order (the order to drop them in).
    pub fn dependents_transitive(&self, id: ObjectId) -> Vec<Arc<ViewDef>> {
        let mut out: Vec<Arc<ViewDef>> = Vec::new();
        let mut frontier = vec![id];
        while let Some(next) = frontier.pop() {
            for v in self.dependents(next) {
                if !out.iter().any(|o| o.id == v.id) {
                    frontier.push(v.id);
                    out.push(v);
                }
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.id));
        out
    }

    /// Takes the next object id, persisted so it is never handed out again.
    pub fn reserve_id(&mut self, store: &StateStore) -> Result<ObjectId> {
        let id = self.next_id;
        let next_json = serde_json::to_vec(&Entry::NextId { next: id + 1 })
            .map_err(|e| crate::internal!("serializing the catalog: {e}"))?;
        store.write_catalog(&[(NEXT_ID_KEY.to_vec(), next_json)], &[])?;
        self.next_id = id + 1;
        Ok(id)
    }

    /// Persists a view (its id already reserved) and adds it.
    pub fn create_view(&mut self, store: &StateStore, def: ViewDef) -> Result<Arc<ViewDef>> {
        let json = serde_json::to_vec(&Entry::View(def.clone()))
            .map_err(|e| crate::internal!("serializing the catalog: {e}"))?;
        store.write_catalog(&[(view_key(def.id), json)], &[])?;
        let def = Arc::new(def);
        self.views.insert(def.name.clone(), def.clone());
        Ok(def)
    }

    pub fn drop_view(&mut self, store: &StateStore, name: &str) -> Result<Arc<ViewDef>> {
        let def = self.views.get(name).cloned().ok_or_else(|| {
            crate::err!(sqlstate::UNDEFINED_TABLE, "view \"{name}\" does not exist")
        })?;
        store.write_catalog(&[], &[view_key(def.id)])?;
        self.views.remove(name);
        Ok(def)
    }

    /// Assigns an id, persists the table and adds it.
    pub fn create_table(&mut self, store: &StateStore, mut def: TableDef) -> Result<Arc<TableDef>> {
        def.id = self.next_id;
        let next = self.next_id + 1;
        let table_json = serde_json::to_vec(&Entry::Table(def.clone()))
            .map_err(|e| crate::internal!("serializing the catalog: {e}"))?;
        let next_json = serde_json::to_vec(&Entry::NextId { next })
            .map_err(|e| crate::internal!("serializing the catalog: {e}"))?;
        store.write_catalog(
            &[
                (table_key(def.id), table_json),
                (NEXT_ID_KEY.to_vec(), next_json),
            ],
            &[],
        )?;
        self.next_id = next;
        let def = Arc::new(def);
        self.tables.insert(def.name.clone(), def.clone());
        Ok(def)
    }

    pub fn drop_table(&mut self, store: &StateStore, name: &str) -> Result<Arc<TableDef>> {
        let def = self.tables.get(name).cloned().ok_or_else(|| {
            crate::err!(sqlstate::UNDEFINED_TABLE, "table \"{name}\" does not exist")
        })?;
        store.write_catalog(&[], &[table_key(def.id)])?;
        self.tables.remove(name);
        Ok(def)
    }

    /// Assigns ids to a source and its tables, persists them all in one write and adds them.
    pub fn create_source(
        &mut self,
        store: &StateStore,
        mut def: SourceDef,
        tables: Vec<TableDef>,
    ) -> Result<(Arc<SourceDef>, Vec<Arc<TableDef>>)> {
        def.id = self.next_id;
        let mut next = def.id + 1;
        let mut entries = Vec::new();
        let mut tables: Vec<TableDef> = tables;
        for t in &mut tables {
            t.id = next;
            t.source = Some(def.id);
            next += 1;
            def.tables.push(t.id);
            entries.push((table_key(t.id), to_json(&Entry::Table(t.clone()))?));
        }
        entries.push((source_key(def.id), to_json(&Entry::Source(def.clone()))?));
        entries.push((NEXT_ID_KEY.to_vec(), to_json(&Entry::NextId { next })?));
        store.write_catalog(&entries, &[])?;
        self.next_id = next;
        let def = Arc::new(def);
        self.sources.insert(def.name.clone(), def.clone());
        let tables: Vec<Arc<TableDef>> = tables.into_iter().map(Arc::new).collect();
        for t in &tables {
            self.tables.insert(t.name.clone(), t.clone());
        }
        Ok((def, tables))
    }

    /// Removes a source and its tables in one write (views reading them must be gone).
    pub fn drop_source(
        &mut self,
        store: &StateStore,
        name: &str,
    ) -> Result<(Arc<SourceDef>, Vec<Arc<TableDef>>)> {
        let def = self.sources.get(name).cloned().ok_or_else(|| {
            crate::err!(
                sqlstate::UNDEFINED_OBJECT,
                "source \"{name}\" does not exist"
            )
        })?;
        let tables: Vec<Arc<TableDef>> = def
            .tables
            .iter()
            .filter_map(|id| self.table_by_id(*id).cloned())
            .collect();
        let mut keys: Vec<Vec<u8>> = tables.iter().map(|t| table_key(t.id)).collect();
        keys.push(source_key(def.id));
        store.write_catalog(&[], &keys)?;
        for t in &tables {
            self.tables.remove(&t.name);
        }
        self.sources.remove(name);
        Ok((def, tables))
    }
}

fn to_json(entry: &Entry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry).map_err(|e| crate::internal!("serializing the catalog: {e}"))
}
