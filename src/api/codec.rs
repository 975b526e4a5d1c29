//! The server's protobuf codec: tonic-prost's, except for requests it cannot decode.
//!
//! tonic-prost answers a message that is not valid protobuf for its type (a truncated
//! field, a string that is not UTF-8, a wrong wire type) with `INTERNAL` and the decoder's
//! own text. Such a request is the caller's fault, so the server answers `INVALID_ARGUMENT`
//! with a fixed message (built in `status.rs`), logs the decoder's text at debug level and
//! counts it in `certbroker_requests_undecodable_total{message}`. `build.rs` installs this
//! codec in the generated server only; the generated client keeps tonic-prost's.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

pub use crate::telemetry::undecodable_counts;

/// The codec of the generated server: encodes like [`ProstCodec`], decodes through
/// [`ServerDecoder`].
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U> {
    inner: ProstCodec<T, U>,
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
            _pd: PhantomData,
        }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerDecoder(self.inner.decoder())
    }
}

/// tonic-prost's decoder, with decode failures turned into `INVALID_ARGUMENT` and counted.
#[derive(Debug)]
pub struct ServerDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ServerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(src).map_err(|e| {
            let message = message_name::<U>();
            crate::telemetry::count_undecodable(message);
            tracing::debug!(message, error = %super::status::bounded(e.message(), 200), "undecodable request");
            super::status::undecodable(message)
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `certbroker::pb::GetCertificateRequest` → `GetCertificateRequest`.
fn message_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}
