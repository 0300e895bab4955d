//! The size of a replicated SQLite database on disk, for the database-size alarm: the
//! database file and its `-wal` and `-shm` files together (in WAL mode the log can
//! grow far past the database file between checkpoints).

use std::path::{Path, PathBuf};

use crate::config::Settings;

/// Bytes in one MB as the config counts them (`[failover] database_size_alarm_mb`).
const MB: u64 = 1 << 20;

/// The bytes on disk of the database the settings name: the file plus its `-wal` and
/// `-shm` files; files that do not exist count as 0.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let settings = tandem_replication::Settings::new(dir.path(), Default::default());
/// assert_eq!(tandem_replication::database_bytes(&settings), 0);
/// ```
pub fn database_bytes(settings: &Settings) -> u64 {
    database_files(&settings.database_path())
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .fold(0u64, u64::saturating_add)
}

/// The alarm text when the database (every file of it, see [`database_bytes`]) is over
/// `limit_mb`, in MB as the limit is configured: `database /path is 12.3 MB, over its
/// limit of 10 MB`. `None` when it is within the limit.
pub fn database_size_alarm(settings: &Settings, limit_mb: u64) -> Option<String> {
    size_alarm(
        &settings.database_path(),
        database_bytes(settings),
        limit_mb,
    )
}

fn size_alarm(path: &Path, bytes: u64, limit_mb: u64) -> Option<String> {
    if bytes <= limit_mb.saturating_mul(MB) {
        return None;
    }
    // Precision is not the point of an alarm; a u64 of bytes fits an f64 well enough.
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / MB as f64;
    Some(format!(
        "database {} is {mb:.1} MB, over its limit of {limit_mb} MB",
        path.display()
    ))
}

/// The database file and its `-wal` and `-shm` files.
fn database_files(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplicationConfig;

    #[test]
    fn every_file_of_the_database_counts_and_the_alarm_speaks_in_mb() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::new(dir.path(), ReplicationConfig::default());
        let db = settings.database_path();
        assert_eq!(database_bytes(&settings), 0);
        std::fs::write(&db, vec![0u8; 3 * MB as usize]).unwrap();
        assert_eq!(database_bytes(&settings), 3 * MB);
        assert_eq!(database_size_alarm(&settings, 10), None);
        // The WAL grows past the limit while the database file stays small.
        let wal = database_files(&db)[1].clone();
        let shm = database_files(&db)[2].clone();
        std::fs::write(&wal, vec![0u8; 9 * MB as usize + (MB as usize * 3 / 10)]).unwrap();
        std::fs::write(&shm, vec![0u8; 32 * 1024]).unwrap();
        assert_eq!(database_bytes(&settings), 12 * MB + MB * 3 / 10 + 32 * 1024);
        assert_eq!(
            database_size_alarm(&settings, 10),
            Some(format!(
                "database {} is 12.3 MB, over its limit of 10 MB",
                db.display()
            ))
        );
        assert_eq!(database_size_alarm(&settings, 13), None);
    }
}
