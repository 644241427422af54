//! [`ZBatch`]: rows with weights, the unit of change everywhere in Eddy.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::Result;

/// Name of the weight column when a ZBatch is stored as one Arrow batch (in the log).
pub const WEIGHT_COLUMN: &str = "_weight";

/// A row converter over every column of `schema` (whole rows as comparable byte keys).
pub fn row_converter(schema: &Schema) -> Result<RowConverter> {
    Ok(RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}

/// Turns rows in a converter's row format, each with a count, back into [`ZBatch`]es of up to
/// [`RowsToBatches::CHUNK`] rows (the count becomes the weight).
pub struct RowsToBatches<'a> {
    converter: &'a RowConverter,
    schema: SchemaRef,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    weights: Vec<i64>,
    out: Vec<ZBatch>,
}

impl<'a> RowsToBatches<'a> {
    pub const CHUNK: usize = 8192;

    /// `schema` has the converter's columns.
    pub fn new(converter: &'a RowConverter, schema: SchemaRef) -> Self {
        RowsToBatches {
            converter,
            schema,
            bytes: Vec::new(),
            ends: Vec::new(),
            weights: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn push(&mut self, row: &[u8], count: i64) -> Result<()> {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
        self.weights.push(count);
        if self.ends.len() >= Self::CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.ends.is_empty() {
            return Ok(());
        }
        let parser = self.converter.parser();
        let mut start = 0;
        let rows = self.ends.iter().map(|end| {
            let row = parser.parse(&self.bytes[start..*end]);
            start = *end;
            row
        });
        let columns = self.converter.convert_rows(rows)?;
        let data = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(self.ends.len())),
        )?;
        let weights = Int64Array::from(std::mem::take(&mut self.weights));
        self.out.push(ZBatch::new(data, weights));
        self.bytes.clear();
        self.ends.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<Vec<ZBatch>> {
        self.flush()?;
        Ok(self.out)
    }
}

/// A batch of changes: `data` holds the rows, `weights[i]` the multiplicity change of row i
/// (+1 insert, -1 delete).
#[derive(Debug, Clone)]
pub struct ZBatch {
    pub data: RecordBatch,
    pub weights: Int64Array,
}

impl ZBatch {
    pub fn new(data: RecordBatch, weights: Int64Array) -> Self {
        debug_assert_eq!(data.num_rows(), weights.len());
        ZBatch { data, weights }
    }

    /// Every row of `data` with the same weight.
    pub fn uniform(data: RecordBatch, weight: i64) -> Self {
        let weights = Int64Array::from(vec![weight; data.num_rows()]);
        ZBatch { data, weights }
    }

    /// `len` rows from `offset` (zero-copy).
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        Self::new(
            self.data.slice(offset, len),
            self.weights.slice(offset, len),
        )
    }

    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// One Arrow batch: the data columns followed by [`WEIGHT_COLUMN`].
    pub fn to_record_batch(&self) -> Result<RecordBatch> {
        let mut fields: Vec<Arc<Field>> = self.data.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(WEIGHT_COLUMN, DataType::Int64, false)));
        let mut columns: Vec<ArrayRef> = self.data.columns().to_vec();
        columns.push(Arc::new(self.weights.clone()));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// The inverse of [`ZBatch::to_record_batch`].
    pub fn from_record_batch(batch: RecordBatch) -> Result<Self> {
        let n = batch.num_columns();
        let weights_idx = n
            .checked_sub(1)
            .ok_or_else(|| crate::internal!("empty log batch"))?;
        if batch.schema().field(weights_idx).name() != WEIGHT_COLUMN {
            return Err(crate::internal!("log batch without a weight column"));
        }
        let weights = batch
            .column(weights_idx)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| crate::internal!("weight column is not Int64"))?
            .clone();
        let data = batch.project(&(0..weights_idx).collect::<Vec<_>>())?;
        Ok(ZBatch { data, weights })
    }

    /// The batch as an Arrow IPC stream (rows plus the weight column), as the log and the
    /// state store keep it.
    pub fn to_ipc(&self) -> Result<Vec<u8>> {
        let batch = self.to_record_batch()?;
        let mut ipc = Vec::new();
        {
            let mut writer =
                datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
            writer.write(&batch)?;
            writer.finish()?;
        }
        Ok(ipc)
    }

    /// The batches of an IPC stream written by [`ZBatch::to_ipc`].
    pub fn from_ipc(ipc: &[u8]) -> Result<Vec<ZBatch>> {
        let reader =
            datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
        reader
            .map(|batch| ZBatch::from_record_batch(batch?))
            .collect()
    }

    /// Sums the weights of identical rows and drops rows whose weight is zero, so that
    /// `(row, +1)` and `(row, -1)` cancel. Output order follows first appearance. Rows without
    /// columns (`count(*)`'s input) are all alike: one row with the weights' sum.
    pub fn consolidate(batches: &[ZBatch], schema: &SchemaRef) -> Result<ZBatch> {
        if schema.fields().is_empty() {
            let sum: i64 = batches.iter().flat_map(|b| b.weights.values().iter()).sum();
            let rows = usize::from(sum != 0);
            let data = RecordBatch::try_new_with_options(
                schema.clone(),
                Vec::new(),
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
            )?;
            let weights = if rows == 0 { vec![] } else { vec![sum] };
            return Ok(ZBatch::new(data, weights.into()));
        }
        let data = concat_batches(schema, batches.iter().map(|b| &b.data))?;
        let weights: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.weights.values().iter().copied())
            .collect();
        let converter = row_converter(schema)?;
        let rows = converter.convert_columns(data.columns())?;
        let mut sums: HashMap<&[u8], (u32, i64)> = HashMap::with_capacity(rows.num_rows());
        let mut order: Vec<&[u8]> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let key = row.data();
            let entry = sums.entry(key).or_insert_with(|| {
                order.push(key);
                (i as u32, 0)
            });
            entry.1 += weights[i];
        }
        let mut indices = Vec::new();
        let mut out_weights = Vec::new();
        for key in order {
            let (idx, w) = sums[key];
            if w != 0 {
                indices.push(idx);
                out_weights.push(w);
            }
        }
        let data = take_record_batch(&data, &UInt32Array::from(indices))?;
        Ok(ZBatch {
            data,
            weights: Int64Array::from(out_weights),
        })
    }

    /// The rows of a consolidated batch with positive weight, each repeated `weight` times:
    /// what a reader of the collection sees.
    pub fn expand_positive(&self) -> Result<RecordBatch> {
        let mut indices = Vec::with_capacity(self.num_rows());
        for (i, w) in self.weights.values().iter().enumerate() {
            for _ in 0..(*w).max(0) {
                indices.push(i as u32);
            }
        }
        Ok(take_record_batch(&self.data, &UInt32Array::from(indices))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn batch(names: &[&str], weights: &[i64]) -> ZBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let data = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(names.to_vec())) as ArrayRef],
        )
        .unwrap();
        ZBatch::new(data, Int64Array::from(weights.to_vec()))
    }

    #[test]
    fn consolidate_cancels_and_sums() {
        let a = batch(&["x", "y", "x"], &[1, 1, 1]);
        let b = batch(&["y", "z"], &[-1, 1]);
        let schema = a.data.schema();
        let c = ZBatch::consolidate(&[a, b], &schema).unwrap();
        let names = c
            .data
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.iter().collect::<Vec<_>>(), vec![Some("x"), Some("z")]);
        assert_eq!(c.weights.values().to_vec(), vec![2, 1]);
        assert_eq!(c.expand_positive().unwrap().num_rows(), 3);
    }

    #[test]
    fn consolidate_rows_without_columns_sums_their_weights() {
        let schema = Arc::new(Schema::empty());
        let rows = |weights: &[i64]| {
            let options = datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(weights.len()));
            let data =
                RecordBatch::try_new_with_options(schema.clone(), Vec::new(), &options).unwrap();
            ZBatch::new(data, Int64Array::from(weights.to_vec()))
        };
        let c = ZBatch::consolidate(&[rows(&[1, 1, -1]), rows(&[1])], &schema).unwrap();
        assert_eq!((c.num_rows(), c.weights.values().to_vec()), (1, vec![2]));
        let gone = ZBatch::consolidate(&[rows(&[1]), rows(&[-1])], &schema).unwrap();
        assert_eq!(gone.num_rows(), 0);
    }

    #[test]
    fn record_batch_round_trip() {
        let a = batch(&["x", "y"], &[1, -1]);
        let back = ZBatch::from_record_batch(a.to_record_batch().unwrap()).unwrap();
        assert_eq!(back.weights.values().to_vec(), vec![1, -1]);
        assert_eq!(back.data.num_columns(), 1);
    }
}
