//! Framing: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! The length is checked against a hard maximum before any body is
//! buffered, so a peer cannot make us allocate more than one frame's worth.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Default hard limit on one frame's body. A VM resource is a few KiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("malformed frame: {reason}")]
    Malformed { reason: String },
    #[error("could not encode frame")]
    Encode(#[source] serde_json::Error),
    #[error("connection i/o failed")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for CodecError {
    // tokio-util's framed streams need this conversion for socket errors.
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e)
    }
}

/// Decodes frames of type `In` and encodes frames of type `Out`.
pub struct FrameCodec<In, Out> {
    max: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max: max_frame,
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max {
            return Err(CodecError::Oversized { len, max: self.max });
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let body = src.split_to(len);
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| CodecError::Malformed {
                reason: e.to_string(),
            })
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = serde_json::to_vec(&item).map_err(CodecError::Encode)?;
        if body.len() > self.max {
            return Err(CodecError::Oversized {
                len: body.len(),
                max: self.max,
            });
        }
        dst.reserve(HEADER + body.len());
        dst.put_u32(body.len() as u32);
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// Encodes one frame to bytes (tests, tools and the wire examples in docs).
pub fn encode_frame<T: Serialize>(item: &T) -> Result<Vec<u8>, CodecError> {
    let body = serde_json::to_vec(item).map_err(CodecError::Encode)?;
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}
