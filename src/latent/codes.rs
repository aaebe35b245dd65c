//! Latent codes on disk: encodings written as NPY (which `np.load` reads unchanged) or CSV, and codes read back for
//! decoding.
//!
//! An NPY output `codes.npy` holds mu as an `N x d` array of `<f4`; the other columns go to files beside it:
//! `codes_log_var.npy`, `codes_sample.npy` (`N x d`, `<f4`) and `codes_labels.npy` (`N`, `<u4`). A CSV output holds
//! them all, one row per example, under the header `mu_0,...,log_var_0,...,z_0,...,label`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use super::encode::Encodings;
use crate::atomic::write_atomic;
use crate::data::npy::{load_examples, write_npy_f32, write_npy_u32};
use crate::data::Values;
use crate::{Error, Result};

/// Which columns besides mu (and the labels, always written when the data has them) to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodeColumns {
    /// Also write log sigma^2.
    pub log_var: bool,
    /// Also write one reparameterized sample z = mu + sigma * eps per example, eps drawn from this seed.
    pub sample_seed: Option<u64>,
}

/// One named block of columns: `N x latent_dim` values.
struct Block {
    name: &'static str,
    values: Vec<f32>,
}

/// Writes `encodings` to `path` (`.npy` or `.csv`), atomically; returns every file written.
pub fn write_encodings(path: &Path, encodings: &Encodings, columns: CodeColumns) -> Result<Vec<PathBuf>> {
    let mut blocks = vec![Block { name: "mu", values: encodings.mu.clone() }];
    if columns.log_var {
        blocks.push(Block { name: "log_var", values: encodings.log_var.clone() });
    }
    if let Some(seed) = columns.sample_seed {
        blocks.push(Block { name: "z", values: encodings.sample(seed)? });
    }
    match extension(path).as_str() {
        "npy" => write_npy_files(path, encodings, &blocks),
        "csv" => write_csv(path, encodings, &blocks).map(|()| vec![path.to_path_buf()]),
        _ => Err(Error::bad_input(path, "file name", "unknown output format; expected a name ending in .npy or .csv")),
    }
}

/// The file beside `path` (`codes.npy`) that holds `part`: `codes_log_var.npy`.
pub fn sidecar_path(path: &Path, part: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}_{part}.npy"))
}

fn write_npy_files(path: &Path, encodings: &Encodings, blocks: &[Block]) -> Result<Vec<PathBuf>> {
    let dims = [encodings.len(), encodings.latent_dim];
    let mut written = Vec::new();
    for block in blocks {
        let file = match block.name {
            "mu" => path.to_path_buf(),
            "z" => sidecar_path(path, "sample"),
            name => sidecar_path(path, name),
        };
        write_npy_f32(&file, &dims, &block.values)?;
        written.push(file);
    }
    if let Some(labels) = &encodings.labels {
        let file = sidecar_path(path, "labels");
        write_npy_u32(&file, &[labels.len()], labels)?;
        written.push(file);
    }
    Ok(written)
}

fn write_csv(path: &Path, encodings: &Encodings, blocks: &[Block]) -> Result<()> {
    let d = encodings.latent_dim;
    let mut header: Vec<String> = blocks.iter().flat_map(|b| (0..d).map(move |i| format!("{}_{i}", b.name))).collect();
    if encodings.labels.is_some() {
        header.push("label".into());
    }
    let mut text = header.join(",") + "\n";
    for row in 0..encodings.len() {
        let values = blocks.iter().flat_map(|b| &b.values[row * d..(row + 1) * d]);
        let mut fields: Vec<String> = values.map(f32::to_string).collect();
        if let Some(labels) = &encodings.labels {
            fields.push(labels[row].to_string());
        }
        let _ = writeln!(text, "{}", fields.join(","));
    }
    write_atomic(path, text.as_bytes())
}

/// Reads latent codes for a model with `latent_dim` dimensions: an NPY file of `<f4` or `<f8` holding an
/// `N x latent_dim` array of finite values (such as the mu file `elbo encode` writes). Returns the values row by row.
pub fn read_latents(path: &Path, latent_dim: usize) -> Result<Vec<f32>> {
    if extension(path) != "npy" {
        return Err(Error::bad_input(path, "file name", "latent codes must be an .npy file of shape N x latent_dim"));
    }
    let array = load_examples(path)?;
    if array.shape.is_image() || array.shape.channels != 1 || array.shape.width != latent_dim {
        let problem = format!(
            "expected N x {latent_dim} codes (the model has {latent_dim} latent dimensions), found examples of {} x {} x {}",
            array.shape.channels, array.shape.height, array.shape.width
        );
        return Err(Error::bad_input(path, "shape", problem));
    }
    match array.values {
        Values::F32(values) => Ok(values),
        Values::Mapped(mapped) if mapped.element() == crate::data::mapped::Element::F32 => Ok(mapped.to_vec()),
        Values::U8(_) | Values::Rendered(_) | Values::Mapped(_) => {
            Err(Error::bad_input(path, "descr", "latent codes must be floats ('<f4' or '<f8'), found bytes"))
        }
    }
}

fn extension(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::{load_labels, read_npy};

    fn encodings() -> Encodings {
        Encodings {
            latent_dim: 2,
            mu: vec![0.5, -1.25, 3.0, 1e-7],
            log_var: vec![0.0, -1.0, 0.5, 0.25],
            labels: Some(vec![2, 0]),
        }
    }

    #[test]
    fn npy_output_reads_back_exactly_with_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.npy");
        let columns = CodeColumns { log_var: true, sample_seed: Some(1) };
        let written = write_encodings(&path, &encodings(), columns).unwrap();
        assert_eq!(written.len(), 4);
        assert_eq!(read_latents(&path, 2).unwrap(), encodings().mu);
        assert_eq!(read_latents(&sidecar_path(&path, "log_var"), 2).unwrap(), encodings().log_var);
        assert_eq!(read_npy(&sidecar_path(&path, "sample")).unwrap().shape, vec![2, 2]);
        assert_eq!(load_labels(&sidecar_path(&path, "labels")).unwrap(), vec![2, 0]);
    }

    #[test]
    fn csv_output_has_named_columns_and_exact_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.csv");
        write_encodings(&path, &encodings(), CodeColumns { log_var: true, sample_seed: None }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "mu_0,mu_1,log_var_0,log_var_1,label");
        assert_eq!(lines[2], "3,0.0000001,0.5,0.25,0");
        let parsed: Vec<f32> = lines[2].split(',').take(2).map(|v| v.parse().unwrap()).collect();
        assert_eq!(parsed, encodings().mu[2..4]);
    }

    #[test]
    fn bad_names_and_shapes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let message = write_encodings(&dir.path().join("codes.txt"), &encodings(), CodeColumns::default())
            .unwrap_err()
            .to_string();
        assert!(message.contains("codes.txt") && message.contains(".npy or .csv"), "{message}");
        let path = dir.path().join("codes.npy");
        write_encodings(&path, &encodings(), CodeColumns::default()).unwrap();
        let message = read_latents(&path, 3).unwrap_err().to_string();
        assert!(message.contains("codes.npy: shape") && message.contains("N x 3"), "{message}");
    }
}
