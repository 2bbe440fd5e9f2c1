//! Arrow IPC *stream* format, the encoding of batches across the WIT boundary.

use arrow::buffer::Buffer;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::{StreamDecoder, StreamReader};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::{Result, TransformError};

/// Decodes a stream into one batch: several batches are concatenated, and a stream holding only
/// a schema gives an empty batch of that schema. Owned bytes (`Vec<u8>`) are decoded in place;
/// borrowed ones are copied first.
pub fn decode(bytes: impl Into<Buffer>) -> Result<RecordBatch> {
    decode_with(bytes.into(), StreamDecoder::new())
}

/// [`decode`] for the batches the host hands the component, without validating their arrays again:
/// the host wrote them from arrays it had validated, and were they wrong all the same, the harm
/// stays inside this sandboxed instance (the host validates whatever comes back).
pub(crate) fn decode_from_host(bytes: Vec<u8>) -> Result<RecordBatch> {
    // arrow-ipc 59's push decoder ignores its skip-validation flag for record batches; the
    // reader honours it, at the price of copying each message body once.
    let reader = StreamReader::try_new(bytes.as_slice(), None).map_err(invalid)?;
    // SAFETY: see above; the bytes are the host's Arrow IPC encoding of validated arrays.
    let reader = unsafe { reader.with_skip_validation(true) };
    let schema = reader.schema();
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(invalid)?;
    one_batch(schema, batches)
}

fn invalid(e: ArrowError) -> TransformError {
    TransformError::new(format!("invalid Arrow IPC stream: {e}"))
}

fn decode_with(mut buffer: Buffer, mut decoder: StreamDecoder) -> Result<RecordBatch> {
    // The push decoder only buffers bytes it was given, so a corrupt length cannot make it
    // allocate more than the input; arrays then point into the buffer (misaligned ones are copied).
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer).map_err(invalid)? {
            batches.push(batch);
        }
    }
    decoder.finish().map_err(invalid)?;
    let schema = decoder
        .schema()
        .ok_or_else(|| TransformError::new("invalid Arrow IPC stream: no schema message"))?;
    one_batch(schema, batches)
}

fn one_batch(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    match batches.as_slice() {
        [] => Ok(RecordBatch::new_empty(schema)),
        [single] => Ok(single.clone()),
        _ => Ok(concat_batches(&schema, &batches)?),
    }
}

/// Encodes one batch as a stream (schema message, the batch, end-of-stream marker).
pub fn encode(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_batch_survives_the_round_trip() -> Result<()> {
        let original = batch(&[1, 2, 3]);
        assert_eq!(decode(encode(&original)?)?, original);
        Ok(())
    }

    #[test]
    fn the_hosts_batches_decode_alike() -> Result<()> {
        let original = batch(&[1, 2, 3]);
        assert_eq!(decode_from_host(encode(&original)?)?, original);
        let empty = batch(&[]);
        assert_eq!(decode_from_host(encode(&empty)?)?.schema(), empty.schema());
        assert!(decode_from_host(b"not arrow".to_vec()).is_err());
        Ok(())
    }

    #[test]
    fn several_batches_in_a_stream_are_concatenated() -> Result<()> {
        let first = batch(&[1, 2]);
        let mut writer = StreamWriter::try_new(Vec::new(), &first.schema())?;
        writer.write(&first)?;
        writer.write(&batch(&[3]))?;
        writer.finish()?;
        let decoded = decode(writer.into_inner()?)?;
        assert_eq!(decoded, batch(&[1, 2, 3]));
        Ok(())
    }

    #[test]
    fn a_stream_with_only_a_schema_is_an_empty_batch() -> Result<()> {
        let schema = batch(&[]).schema();
        let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
        writer.finish()?;
        let decoded = decode(writer.into_inner()?)?;
        assert_eq!(decoded.num_rows(), 0);
        assert_eq!(decoded.schema(), schema);
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"").is_err());
        assert!(decode(b"definitely not arrow").is_err());
        let valid = encode(&batch(&[1, 2, 3])).unwrap_or_default();
        assert!(
            decode(&valid[..valid.len() - 9]).is_err(),
            "a truncated stream"
        );
    }
}
