//! Operator state containers (in memory; the durability issue backs them with RocksDB).
