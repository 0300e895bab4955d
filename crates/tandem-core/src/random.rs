//! Random numbers from the operating system (`getrandom(2)`), for identifiers
//! that two nodes or two runs must not share; never a read of `/dev/urandom`,
//! which a chroot or a container may lack.

/// A random number from the operating system's generator.
///
/// ```
/// let (a, b) = (tandem_core::random_u64()?, tandem_core::random_u64()?);
/// assert_ne!(a, b);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn random_u64() -> std::io::Result<u64> {
    getrandom::u64().map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn random_numbers_differ() {
        let numbers: std::collections::HashSet<u64> =
            (0..16).map(|_| super::random_u64().unwrap()).collect();
        assert_eq!(numbers.len(), 16);
    }
}
