//! The wire format: every frame is a 4-byte big-endian length followed by that many
//! bytes of one Noise message (a handshake message, or ciphertext plus a 16-byte tag).
//!
//! The length is checked before anything is allocated or read: a prefix above
//! [`MAX_FRAME_LEN`] (the Noise limit of 65 535 bytes) or below [`MIN_FRAME_LEN`] is an
//! error. This module is pure and public so tools and tests can take traffic apart.

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest frame body (one Noise message) in bytes.
pub const MAX_FRAME_LEN: usize = 65_535;
/// Length of the authentication tag that ends every encrypted frame.
pub const TAG_LEN: usize = 16;
/// Smallest frame body: an empty payload still carries its tag.
pub const MIN_FRAME_LEN: usize = TAG_LEN;
/// Largest plaintext carried by one frame.
pub const MAX_PLAINTEXT_LEN: usize = MAX_FRAME_LEN - TAG_LEN;

/// An invalid length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    Oversized {
        /// The announced length.
        len: u64,
        /// The maximum.
        max: usize,
    },
    /// The length prefix announces fewer than [`MIN_FRAME_LEN`] bytes.
    #[error("frame length {len} is below the minimum of {min} bytes")]
    Undersized {
        /// The announced length.
        len: u64,
        /// The minimum.
        min: usize,
    },
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame.
    Frame {
        /// The frame body (without the prefix).
        body: &'a [u8],
        /// Bytes of the buffer the frame used, prefix included.
        consumed: usize,
    },
    /// The buffer holds the start of a valid frame; this many more bytes are needed.
    Incomplete {
        /// Missing bytes.
        needed: usize,
    },
}

/// Checks a length prefix and returns the body length it announces.
pub fn body_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    let wide = u64::from(len);
    match usize::try_from(len) {
        Ok(n) if n > MAX_FRAME_LEN => Err(FrameError::Oversized {
            len: wide,
            max: MAX_FRAME_LEN,
        }),
        Ok(n) if n < MIN_FRAME_LEN => Err(FrameError::Undersized {
            len: wide,
            min: MIN_FRAME_LEN,
        }),
        Ok(n) => Ok(n),
        Err(_) => Err(FrameError::Oversized {
            len: wide,
            max: MAX_FRAME_LEN,
        }),
    }
}

/// The prefix for a body of `len` bytes.
pub fn prefix(len: usize) -> Result<[u8; LEN_PREFIX], FrameError> {
    let wide = u64::try_from(len).unwrap_or(u64::MAX);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversized {
            len: wide,
            max: MAX_FRAME_LEN,
        });
    }
    if len < MIN_FRAME_LEN {
        return Err(FrameError::Undersized {
            len: wide,
            min: MIN_FRAME_LEN,
        });
    }
    // Both bounds were checked, so the value fits in 32 bits.
    Ok(u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes())
}

/// Encodes one frame: prefix and body.
pub fn encode(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let head = prefix(body.len())?;
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Ok(out)
}

/// Decodes the frame at the start of `buf`. An invalid prefix is an error as soon as its
/// four bytes are there, before the body arrives.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, FrameError> {
    let Some(head) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(Decoded::Incomplete {
            needed: LEN_PREFIX - buf.len(),
        });
    };
    let len = body_len(*head)?;
    let end = LEN_PREFIX + len;
    match buf.get(LEN_PREFIX..end) {
        Some(body) => Ok(Decoded::Frame {
            body,
            consumed: end,
        }),
        None => Ok(Decoded::Incomplete {
            needed: end - buf.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes from a seed (a per-byte strategy is too slow for 64 KiB bodies).
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), MIN_FRAME_LEN..200),
            (MIN_FRAME_LEN..=MAX_FRAME_LEN, any::<u64>()).prop_map(|(len, seed)| bytes(len, seed)),
            any::<u64>().prop_map(|seed| bytes(MAX_FRAME_LEN, seed)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(body in body(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut wire = encode(&body).unwrap();
            let frame_len = wire.len();
            wire.extend_from_slice(&tail);
            prop_assert_eq!(decode(&wire), Ok(Decoded::Frame { body: &body, consumed: frame_len }));
            // A cut prefix asks for the rest of the prefix; a cut body for the rest of the frame.
            for cut in [0, 1, LEN_PREFIX - 1] {
                prop_assert_eq!(decode(&wire[..cut]), Ok(Decoded::Incomplete { needed: LEN_PREFIX - cut }));
            }
            for cut in [LEN_PREFIX, frame_len / 2, frame_len - 1] {
                prop_assert_eq!(decode(&wire[..cut]), Ok(Decoded::Incomplete { needed: frame_len - cut }));
            }
        }

        #[test]
        fn any_bytes_give_a_frame_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match decode(&bytes) {
                Ok(Decoded::Frame { body, consumed }) => {
                    prop_assert!(consumed <= bytes.len());
                    prop_assert_eq!(body.len() + LEN_PREFIX, consumed);
                }
                Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > 0),
                Err(_) => {}
            }
        }

        #[test]
        fn oversized_prefix_is_rejected_from_the_prefix_alone(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX) {
            // Only the four prefix bytes exist: the decoder must refuse without waiting
            // for (or allocating) the announced body.
            let wire = len.to_be_bytes();
            prop_assert_eq!(decode(&wire), Err(FrameError::Oversized { len: u64::from(len), max: MAX_FRAME_LEN }));
            prop_assert!(body_len(wire).is_err());
        }

        #[test]
        fn undersized_prefix_is_rejected(len in 0u32..(MIN_FRAME_LEN as u32)) {
            let wire = len.to_be_bytes();
            prop_assert_eq!(decode(&wire), Err(FrameError::Undersized { len: u64::from(len), min: MIN_FRAME_LEN }));
        }
    }

    #[test]
    fn encode_refuses_bodies_out_of_range() {
        assert!(matches!(
            encode(&vec![0; MAX_FRAME_LEN + 1]),
            Err(FrameError::Oversized { .. })
        ));
        assert!(matches!(
            encode(&[0; MIN_FRAME_LEN - 1]),
            Err(FrameError::Undersized { .. })
        ));
    }
}
