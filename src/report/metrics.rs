//! Reading `metrics.csv` back for plotting, by column name (so columns added later, such as `weighted_kl`, are found
//! wherever they are, and unknown ones are ignored).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The columns every metrics file must have.
const REQUIRED: [&str; 3] = ["kind", "step", "split"];

/// The rows of a `metrics.csv`, kept as text until a column is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsTable {
    path: PathBuf,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl MetricsTable {
    /// Reads `path`, checking that the header has the `kind`, `step` and `split` columns and that every row has as
    /// many fields as the header.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().ok_or_else(|| Error::bad_input(path, "header", "the file is empty"))?;
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        if let Some(missing) = REQUIRED.iter().find(|r| !columns.iter().any(|c| c == *r)) {
            let problem = format!("no `{missing}` column; expected a header with {}", REQUIRED.join(", "));
            return Err(Error::bad_input(path, "header", problem));
        }
        let mut rows = Vec::new();
        for (number, line) in lines.enumerate() {
            let fields: Vec<String> = line.split(',').map(|f| f.trim().to_string()).collect();
            if fields.len() != columns.len() {
                let problem = format!("{} fields, but the header has {} columns", fields.len(), columns.len());
                return Err(Error::bad_input(path, format!("line {}", number + 2), problem));
            }
            rows.push(fields);
        }
        Ok(MetricsTable { path: path.to_path_buf(), columns, rows })
    }

    /// True when the header has `column`.
    pub fn has_column(&self, column: &str) -> bool {
        self.index(column).is_some()
    }

    /// (step, value) of `column` for the rows of `kind` (`step` or `epoch`) and `split` (`train`, `test` or
    /// `validation`), in file order; rows with the field empty are left out. Empty when the column does not exist;
    /// an error names the line of a value that is not a number.
    pub fn series(&self, kind: &str, split: &str, column: &str) -> Result<Vec<(f64, f64)>> {
        let Some(value_at) = self.index(column) else { return Ok(Vec::new()) };
        let [kind_at, step_at, split_at] = REQUIRED.map(|c| self.index(c).unwrap_or_default());
        let mut points = Vec::new();
        for (number, row) in self.rows.iter().enumerate() {
            if row[kind_at] == kind && row[split_at] == split && !row[value_at].is_empty() {
                points.push((self.number(number, step_at, row)?, self.number(number, value_at, row)?));
            }
        }
        Ok(points)
    }

    /// The held-out split's name in this file: `test` if any row has it, otherwise `validation`.
    pub fn held_out_split(&self) -> &'static str {
        let split_at = self.index("split").unwrap_or_default();
        if self.rows.iter().any(|row| row[split_at] == "test") {
            "test"
        } else {
            "validation"
        }
    }

    fn index(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }

    fn number(&self, row_number: usize, column: usize, row: &[String]) -> Result<f64> {
        row[column].parse().map_err(|_| {
            let field = format!("line {} column {}", row_number + 2, self.columns[column]);
            Error::bad_input(&self.path, field, format!("`{}` is not a number", row[column]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<MetricsTable> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        std::fs::write(&path, text).unwrap();
        MetricsTable::read(&path)
    }

    #[test]
    fn columns_are_found_by_name_wherever_they_are() {
        let metrics = table(
            "kind,epoch,step,split,reconstruction,kl,weighted_kl,extra\n\
             step,1,1,train,90.5,3,1.5,x\nstep,1,2,train,80,4,2,x\nepoch,1,2,train,85,3.5,1.75,\n\
             epoch,1,2,validation,86,3.6,1.8,\nepoch,2,4,validation,84,3.2,,\n",
        )
        .unwrap();
        assert_eq!(metrics.series("step", "train", "reconstruction").unwrap(), [(1.0, 90.5), (2.0, 80.0)]);
        assert_eq!(
            metrics.series("epoch", "validation", "weighted_kl").unwrap(),
            [(2.0, 1.8)],
            "empty fields are skipped"
        );
        assert!(metrics.series("epoch", "train", "missing").unwrap().is_empty());
        assert!(metrics.has_column("weighted_kl") && !metrics.has_column("missing"));
        assert_eq!(metrics.held_out_split(), "validation");
    }

    #[test]
    fn bad_files_name_the_line_and_column() {
        let message = table("epoch,step\n").unwrap_err().to_string();
        assert!(message.contains("metrics.csv: header") && message.contains("`kind`"), "{message}");
        let message = table("kind,step,split,kl\nstep,1,train\n").unwrap_err().to_string();
        assert!(message.contains("line 2") && message.contains("3 fields"), "{message}");
        let bad = table("kind,step,split,kl\nstep,1,train,oops\n").unwrap();
        let message = bad.series("step", "train", "kl").unwrap_err().to_string();
        assert!(message.contains("line 2 column kl") && message.contains("oops"), "{message}");
    }
}
