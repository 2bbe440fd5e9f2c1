//! Arrow IPC *stream* format, the encoding of batches across the WIT boundary.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::MessageHeader;
use arrow::ipc::reader::{RecordBatchDecoder, StreamDecoder};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use arrow_data::UnsafeFlag;

use crate::{Result, TransformError};

/// Decodes a stream into one batch: several batches are concatenated, and a stream holding only
/// a schema gives an empty batch of that schema. Owned bytes (`Vec<u8>`) are decoded in place;
/// borrowed ones are copied first.
pub fn decode(bytes: impl Into<Buffer>) -> Result<RecordBatch> {
    decode_with(bytes.into(), StreamDecoder::new())
}

/// [`decode`] for the batches the host hands the component: in place, and without validating the
/// arrays again. The host wrote them from arrays it had validated, and were they wrong all the
/// same, the harm stays inside this sandboxed instance (the host validates whatever comes back).
pub(crate) fn decode_from_host(bytes: Vec<u8>) -> Result<RecordBatch> {
    let buffer = Buffer::from(bytes);
    match decode_trusted(&buffer).map_err(invalid)? {
        Some((schema, batches)) => one_batch(schema, batches),
        // Dictionaries (never sent by weir's host) take the general path.
        None => decode(buffer),
    }
}

/// The stream's schema and batches, arrays pointing into `buffer`; `None` for a stream with
/// dictionaries.
///
/// arrow-ipc 59's push decoder ignores its skip-validation flag for record batches and its reader
/// copies every message body, so the stream's framing (continuation marker, metadata length,
/// metadata, body) is walked here and each batch handed to arrow's own batch decoder.
fn decode_trusted(
    buffer: &Buffer,
) -> std::result::Result<Option<(SchemaRef, Vec<RecordBatch>)>, ArrowError> {
    let truncated = || ArrowError::IpcError("truncated stream".into());
    let mut skip_validation = UnsafeFlag::new();
    // SAFETY: see `decode_from_host`; the bytes are the host's encoding of validated arrays.
    unsafe { skip_validation.set(true) };
    let no_dictionaries = HashMap::new();
    let (mut schema, mut batches, mut at) = (None, Vec::new(), 0);
    while at < buffer.len() {
        let mut length = read_i32(buffer, at).ok_or_else(truncated)?;
        at += 4;
        if length == CONTINUATION {
            length = read_i32(buffer, at).ok_or_else(truncated)?;
            at += 4;
        }
        if length == 0 {
            break; // end of stream
        }
        let metadata_end = usize::try_from(length)
            .ok()
            .and_then(|length| at.checked_add(length))
            .filter(|&end| end <= buffer.len())
            .ok_or_else(truncated)?;
        let message = arrow::ipc::root_as_message(&buffer[at..metadata_end])
            .map_err(|e| ArrowError::IpcError(format!("unreadable message: {e}")))?;
        let body_end = usize::try_from(message.bodyLength())
            .ok()
            .and_then(|length| metadata_end.checked_add(length))
            .filter(|&end| end <= buffer.len())
            .ok_or_else(truncated)?;
        match message.header_type() {
            MessageHeader::Schema => {
                let header = message.header_as_schema().ok_or_else(truncated)?;
                schema = Some(Arc::new(arrow::ipc::convert::fb_to_schema(header)));
            }
            MessageHeader::RecordBatch => {
                let header = message.header_as_record_batch().ok_or_else(truncated)?;
                let schema = schema
                    .clone()
                    .ok_or_else(|| ArrowError::IpcError("a batch before the schema".into()))?;
                let body = buffer.slice_with_length(metadata_end, body_end - metadata_end);
                let batch = RecordBatchDecoder::try_new(
                    &body,
                    header,
                    schema,
                    &no_dictionaries,
                    &message.version(),
                )?
                .with_skip_validation(skip_validation.clone())
                .read_record_batch()?;
                batches.push(batch);
            }
            _ => return Ok(None),
        }
        at = body_end;
    }
    let schema = schema.ok_or_else(|| ArrowError::IpcError("no schema message".into()))?;
    Ok(Some((schema, batches)))
}

/// Marks a message length in the stream format since Arrow 0.15.
const CONTINUATION: i32 = -1;

fn read_i32(buffer: &[u8], at: usize) -> Option<i32> {
    let bytes = buffer.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes(bytes.try_into().ok()?))
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
    fn the_hosts_batches_are_read_in_place() -> Result<()> {
        let bytes = encode(&batch(&[1, 2, 3]))?;
        let input = bytes.as_ptr_range();
        let (start, end) = (input.start as usize, input.end as usize);
        let decoded = decode_from_host(bytes)?;
        let values = decoded.column(0).to_data().buffers()[0].as_ptr() as usize;
        assert!((start..end).contains(&values), "the values were copied");
        Ok(())
    }

    #[test]
    fn a_cut_or_corrupt_stream_from_the_host_is_an_error() -> Result<()> {
        let valid = encode(&batch(&[1, 2, 3]))?;
        for cut in [1, 4, 8, 9, valid.len() / 2, valid.len() - 9] {
            assert!(
                decode_from_host(valid[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut huge_length = valid.clone();
        huge_length[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(decode_from_host(huge_length).is_err());
        let mut negative_length = valid;
        negative_length[4..8].copy_from_slice(&(-7_i32).to_le_bytes());
        assert!(decode_from_host(negative_length).is_err());
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
