//! Durable key-value state in RocksDB: one DB per data directory.
//!
//! Today it holds the catalog (column family `catalog`); operator state and checkpoints (a later
//! issue) get their own column families in the same DB so that state and the log positions it
//! covers commit in one atomic `WriteBatch`. RocksDB's `LOCK` file also keeps a second server
//! process off the same data directory.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result, sqlstate};

const CATALOG_CF: &str = "catalog";

pub struct StateStore {
    db: DB,
}

fn rocks_err(context: &str, e: rocksdb::Error) -> Error {
    let text = e.to_string();
    let code = if text.contains("lock") || text.contains("LOCK") {
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
    } else if text.contains("No space") {
        sqlstate::DISK_FULL
    } else {
        sqlstate::IO_ERROR
    };
    crate::err!(code, "{context}: {text}")
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_keep_log_file_num(4);
        let cfs = vec![ColumnFamilyDescriptor::new(CATALOG_CF, Options::default())];
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(|e| {
            rocks_err(
                &format!(
                    "opening state store {} (is another eddy server using this data directory?)",
                    path.display()
                ),
                e,
            )
        })?;
        Ok(StateStore { db })
    }

    fn catalog_cf(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(CATALOG_CF)
            .ok_or_else(|| crate::internal!("missing column family {CATALOG_CF}"))
    }

    /// All catalog entries, in key order.
    pub fn catalog_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.catalog_cf()?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| rocks_err("reading the catalog", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Applies puts and deletes to the catalog atomically and durably (synced).
    pub fn write_catalog(&self, puts: &[(Vec<u8>, Vec<u8>)], deletes: &[Vec<u8>]) -> Result<()> {
        let cf = self.catalog_cf()?;
        let mut batch = WriteBatch::default();
        for (k, v) in puts {
            batch.put_cf(cf, k, v);
        }
        for k in deletes {
            batch.delete_cf(cf, k);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| rocks_err("writing the catalog", e))
    }
}
