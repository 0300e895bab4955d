//! Tests of the SQLite backend on real database files.
