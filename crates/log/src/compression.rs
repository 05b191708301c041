//! Compression codecs of the records section of a batch, numbered as in Kafka's batch attributes.
//!
//! Only the records section (after the record count) is compressed; the 61-byte header stays
//! plain so that offsets can be assigned without touching the payload.

use std::io::{Read, Write};

use crate::error::BatchError;

/// The compression codec of a record batch (attribute bits 0..=2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as they are.
    #[default]
    None,
    /// gzip (RFC 1952), Kafka codec 1.
    Gzip,
    /// LZ4 frame format (Kafka codec 3, as written by Kafka 0.10 and later).
    Lz4,
    /// Zstandard frame, Kafka codec 4.
    Zstd,
}

impl Compression {
    /// The codec's id in the batch attributes.
    pub fn id(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec with this attribute id.
    ///
    /// # Errors
    /// [`BatchError::UnsupportedCompression`] for snappy (Kafka frames it with xerial's
    /// non-standard stream format, which no well-kept Rust crate writes) and for unknown ids.
    pub fn from_id(id: u8) -> Result<Self, BatchError> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnsupportedCompression { codec: other }),
        }
    }

    /// Parses a codec name as used in configs and flags: `none`, `gzip`, `lz4`, `zstd`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "none" | "uncompressed" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The codec's name, as accepted by [`Compression::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Compresses `data` with this codec.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::fast(),
                );
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Lz4 => {
                let mut enc =
                    lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Zstd => {
                zstd::bulk::compress(data, 1).expect("zstd compression of a slice cannot fail")
            }
        }
    }

    /// Decompresses `data`, refusing output larger than `max_len` bytes (a decompression bomb
    /// must not exhaust the broker's memory).
    ///
    /// # Errors
    /// [`BatchError::Decompression`] for corrupt input or output over `max_len`.
    pub fn decompress(self, data: &[u8], max_len: usize) -> Result<Vec<u8>, BatchError> {
        let codec = self.name();
        let limit = max_len as u64 + 1;
        let mut out = Vec::new();
        let result = match self {
            Compression::None => {
                out.extend_from_slice(data);
                Ok(0)
            }
            Compression::Gzip => {
                flate2::read::GzDecoder::new(data).take(limit).read_to_end(&mut out)
            }
            Compression::Lz4 => {
                lz4_flex::frame::FrameDecoder::new(data).take(limit).read_to_end(&mut out)
            }
            Compression::Zstd => zstd::stream::read::Decoder::with_buffer(data)
                .and_then(|d| d.take(limit).read_to_end(&mut out)),
        };
        if let Err(e) = result {
            return Err(BatchError::Decompression { codec, reason: e.to_string() });
        }
        if out.len() > max_len {
            return Err(BatchError::Decompression {
                codec,
                reason: format!("decompressed size exceeds {max_len} bytes"),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 4] =
        [Compression::None, Compression::Gzip, Compression::Lz4, Compression::Zstd];

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in ALL {
            let packed = codec.compress(&data);
            assert_eq!(codec.decompress(&packed, data.len()).unwrap(), data, "{codec:?}");
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let data = vec![7u8; 1 << 20];
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let packed = codec.compress(&data);
            let err = codec.decompress(&packed, 1000).unwrap_err();
            assert!(matches!(err, BatchError::Decompression { .. }), "{codec:?}: {err}");
        }
    }

    #[test]
    fn garbage_is_a_decompression_error_not_a_panic() {
        for codec in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let err = codec.decompress(b"definitely not compressed", 1 << 20).unwrap_err();
            assert!(matches!(err, BatchError::Decompression { .. }), "{codec:?}");
        }
    }

    #[test]
    fn snappy_and_unknown_ids_are_unsupported() {
        assert_eq!(Compression::from_id(2), Err(BatchError::UnsupportedCompression { codec: 2 }));
        assert_eq!(Compression::from_id(7), Err(BatchError::UnsupportedCompression { codec: 7 }));
    }
}
