//! Comma-separated numbers, one example per row, read with the `csv` crate (RFC 4180 quoting, a UTF-8 byte-order
//! mark, `\n` or `\r\n` line ends; cells are trimmed).
//!
//! - The first non-blank row is a header, and skipped, when none of its cells is a number; a first row that mixes
//!   numbers and other cells is data, and its cell that is not a number an error.
//! - Blank lines are skipped; line numbers in messages count every line of the file, from 1.
//! - An optional label column (0-based index) holds non-negative integer class labels and is removed from the values.
//! - Every row must have the same number of columns; every value must be a finite number.
//! - When every value is an integer in 0..=255 and some value is above 1, the values are taken to be pixels and kept
//!   as bytes ([`Values::U8`]), so they are scaled to [0, 1] when batched. Otherwise they are kept as f32, unscaled.

use std::path::Path;

use super::{Dataset, Values};
use crate::{Error, Result};

/// Loads a CSV file of examples, with class labels taken from `label_column` (0-based) when given.
pub fn load_csv(path: &Path, label_column: Option<usize>) -> Result<Dataset> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true) // rows of the wrong width are reported by `Rows`, naming both widths
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut rows = Rows { path, label_column, first: None, values: Vec::new(), labels: Vec::new() };
    let mut record = csv::StringRecord::new();
    let mut first_row = true;
    while reader.read_record(&mut record).map_err(|e| csv_error(path, e))? {
        if record.iter().all(str::is_empty) {
            continue; // a blank line
        }
        let number = record.position().map_or(0, |position| position.line() as usize);
        if std::mem::take(&mut first_row) && is_header(&record) {
            continue;
        }
        rows.push(number, &record)?;
    }
    rows.into_dataset()
}

/// The crate's error as ours: an I/O error, or one naming the line that could not be read.
fn csv_error(path: &Path, error: csv::Error) -> Error {
    let line = error.position().map(|position| format!("line {}", position.line()));
    match error.into_kind() {
        csv::ErrorKind::Io(error) => Error::io(path, error),
        csv::ErrorKind::Utf8 { err, .. } => {
            Error::bad_input(path, line.unwrap_or_else(|| "text".into()), format!("is not UTF-8 text ({err})"))
        }
        other => Error::bad_input(path, line.unwrap_or_else(|| "csv".into()), format!("{other:?}")),
    }
}

/// True when no cell of the row is a number.
fn is_header(record: &csv::StringRecord) -> bool {
    record.iter().all(|cell| cell.parse::<f32>().is_err())
}

/// The rows read so far.
struct Rows<'a> {
    path: &'a Path,
    label_column: Option<usize>,
    /// The first data row's line number and column count.
    first: Option<(usize, usize)>,
    values: Vec<f32>,
    labels: Vec<u32>,
}

impl Rows<'_> {
    /// Parses the data row on line `number`.
    fn push(&mut self, number: usize, record: &csv::StringRecord) -> Result<()> {
        self.check_columns(number, record.len())?;
        for (column, cell) in record.iter().enumerate() {
            if Some(column) == self.label_column {
                self.labels.push(self.parse_label(number, column, cell)?);
            } else {
                self.values.push(self.parse_value(number, column, cell)?);
            }
        }
        Ok(())
    }

    /// Checks a row's column count against the first row's (and, on the first row, the label column).
    fn check_columns(&mut self, number: usize, count: usize) -> Result<()> {
        let Some((first_line, expected)) = self.first else {
            self.check_label_column(number, count)?;
            self.first = Some((number, count));
            return Ok(());
        };
        if count != expected {
            let problem = format!("expected {expected} columns (as on line {first_line}), found {count}");
            return Err(Error::bad_input(self.path, format!("line {number}"), problem));
        }
        Ok(())
    }

    /// Checks that the label column exists and that some column is left for values.
    fn check_label_column(&self, number: usize, count: usize) -> Result<()> {
        let Some(column) = self.label_column else { return Ok(()) };
        let problem = if column >= count {
            format!("column index {column} (0-based) does not exist: line {number} has {count} columns")
        } else if count == 1 {
            "the label column is the only column, which leaves no values".to_string()
        } else {
            return Ok(());
        };
        Err(Error::bad_input(self.path, "label column", problem))
    }

    /// The value in the cell at `column` (0-based) of line `number`.
    fn parse_value(&self, number: usize, column: usize, cell: &str) -> Result<f32> {
        match cell.parse::<f32>() {
            Ok(value) if value.is_finite() => Ok(value),
            Ok(_) => Err(self.cell_error(number, column, format!("'{cell}' is not finite; values must be finite"))),
            Err(_) => Err(self.cell_error(number, column, format!("expected a number, found '{cell}'"))),
        }
    }

    /// The class label in the cell at `column` (0-based) of line `number`.
    fn parse_label(&self, number: usize, column: usize, cell: &str) -> Result<u32> {
        cell.parse().map_err(|_| {
            self.cell_error(number, column, format!("expected a non-negative integer label, found '{cell}'"))
        })
    }

    /// An error about one cell, naming its line and 1-based column.
    fn cell_error(&self, number: usize, column: usize, problem: String) -> Error {
        Error::bad_input(self.path, format!("line {number}, column {}", column + 1), problem)
    }

    /// The dataset made of the rows read.
    fn into_dataset(self) -> Result<Dataset> {
        let Some((_, columns)) = self.first else {
            return Err(Error::bad_input(self.path, "data", "no data rows: the file holds no examples"));
        };
        let width = columns - usize::from(self.label_column.is_some());
        let dims = [self.values.len() / width, width];
        let mut dataset = Dataset::from_array(self.path, &dims, compact(self.values))?;
        dataset.labels = self.label_column.map(|_| self.labels);
        Ok(dataset)
    }
}

/// The values as bytes when they all are integers in 0..=255 and some is above 1 (pixels), else as they are.
fn compact(values: Vec<f32>) -> Values {
    let is_byte = |v: f32| v.fract() == 0.0 && (0.0..=255.0).contains(&v);
    if values.iter().all(|&v| is_byte(v)) && values.iter().any(|&v| v > 1.0) {
        Values::U8(values.into_iter().map(|v| v as u8).collect())
    } else {
        Values::F32(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ExampleShape;
    use std::path::PathBuf;
    use tempfile::TempDir;

    fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn error_of(dir: &TempDir, name: &str, text: &str, label_column: Option<usize>) -> String {
        load_csv(&write(dir, name, text), label_column).unwrap_err().to_string()
    }

    #[test]
    fn floats_without_header_load_as_f32() {
        let dir = TempDir::new().unwrap();
        let data = load_csv(&write(&dir, "plain.csv", "0.5, 1\n-2,3e-1\n\n"), None).unwrap();
        assert_eq!(data.shape, ExampleShape::flat(2));
        assert_eq!(data.values, Values::F32(vec![0.5, 1.0, -2.0, 0.3]));
        assert_eq!(data.labels, None);
    }

    #[test]
    fn header_and_label_column_are_handled() {
        let dir = TempDir::new().unwrap();
        let text = "a,label,b\r\n0.1,3,0.2\r\n0.3,0,0.4\r\n";
        let data = load_csv(&write(&dir, "labelled.csv", text), Some(1)).unwrap();
        assert_eq!(data.values, Values::F32(vec![0.1, 0.2, 0.3, 0.4]));
        assert_eq!(data.labels, Some(vec![3, 0]));
        assert_eq!(data.len(), 2);
    }

    #[test]
    fn a_first_row_that_mixes_numbers_and_words_is_an_error_not_a_header() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&dir, "mixed.csv", "0.5,abc,0.5\n0.1,0.2,0.3\n", None);
        assert!(message.contains("mixed.csv") && message.contains("abc") && message.contains("line 1"), "{message}");
    }

    #[test]
    fn quoted_cells_a_byte_order_mark_and_blank_lines_are_read() {
        let dir = TempDir::new().unwrap();
        let text = "\u{feff}\"width, cm\",\"label\"\n\n\"0.5\" , 2\r\n  \n\"1e-1\",0\n";
        let data = load_csv(&write(&dir, "quoted.csv", text), Some(1)).unwrap();
        assert_eq!(data.values, Values::F32(vec![0.5, 0.1]));
        assert_eq!(data.labels, Some(vec![2, 0]));
        let message = error_of(&dir, "lines.csv", "a,b\n\n1,2\n3,x\n", None);
        assert!(message.contains("lines.csv: line 4, column 2"), "line numbers count blank lines: {message}");
    }

    #[test]
    fn pixel_values_are_kept_as_bytes() {
        let dir = TempDir::new().unwrap();
        let data = load_csv(&write(&dir, "pixels.csv", "7,0,255,128\n1,12,0,3\n"), Some(0)).unwrap();
        assert_eq!(data.values, Values::U8(vec![0, 255, 128, 12, 0, 3]));
        assert_eq!(data.labels, Some(vec![7, 1]));
        let binary = load_csv(&write(&dir, "binary.csv", "0,1\n1,0\n"), None).unwrap();
        assert_eq!(binary.values, Values::F32(vec![0.0, 1.0, 1.0, 0.0]));
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = TempDir::new().unwrap();
        let message = load_csv(&dir.path().join("gone.csv"), None).unwrap_err().to_string();
        assert!(message.contains("gone.csv"), "{message}");
    }

    #[test]
    fn ragged_rows_name_the_line_and_counts() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&dir, "ragged.csv", "x,y,z\n1,2,3\n4,5\n", None);
        assert!(message.contains("ragged.csv: line 3: expected 3 columns (as on line 2), found 2"), "{message}");
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&dir, "text.csv", "1,2\n3,abc\n", None);
        assert!(message.contains("text.csv: line 2, column 2: expected a number, found 'abc'"), "{message}");
        for (name, cell) in [("nan.csv", "NaN"), ("inf.csv", "inf"), ("big.csv", "1e39")] {
            let message = error_of(&dir, name, &format!("1,2\n3,4\n{cell},5\n"), None);
            assert!(message.contains(name) && message.contains("line 3, column 1"), "{message}");
            assert!(message.contains("not finite"), "{message}");
        }
        let message = error_of(&dir, "label.csv", "1,2\n-1,4\n", Some(0));
        assert!(message.contains("label.csv: line 2, column 1: expected a non-negative integer label"), "{message}");
    }

    #[test]
    fn bad_label_column_and_empty_file_are_errors() {
        let dir = TempDir::new().unwrap();
        let message = error_of(&dir, "narrow.csv", "1,2\n", Some(2));
        assert!(
            message.contains("narrow.csv") && message.contains("column index 2 (0-based) does not exist"),
            "{message}"
        );
        let message = error_of(&dir, "single.csv", "1\n2\n", Some(0));
        assert!(message.contains("single.csv") && message.contains("leaves no values"), "{message}");
        let message = error_of(&dir, "empty.csv", "a,b\n\n", None);
        assert!(message.contains("empty.csv") && message.contains("no data rows"), "{message}");
    }
}
