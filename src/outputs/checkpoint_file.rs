//! `checkpoint.safetensors`: everything a run needs to continue exactly. The model's weights under their own names
//! (so any safetensors reader can take them), the optimiser's moments under `optimizer.first.<name>` and
//! `optimizer.second.<name>`, and in the header's metadata (key `elbo`) a JSON record of where the run stands: epoch,
//! batch, step, the random streams' positions, the epoch's running sums, the optimiser's step count and learning
//! rate. One file, written atomically, so the weights and the state can never come from two different moments.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::View;

use crate::atomic::write_atomic_with;
use crate::model::check_finite;
use crate::training::{Checkpoint, OptimizerState};
use crate::{Error, Result};

/// The format tag in the metadata; a later layout gets a new tag.
const FORMAT: &str = "elbo-checkpoint/1";
/// The metadata key of the JSON record.
const METADATA_KEY: &str = "elbo";
/// Name prefixes of the optimiser's moments.
const FIRST_MOMENT: &str = "optimizer.first.";
const SECOND_MOMENT: &str = "optimizer.second.";
/// The safetensors header's length is padded to a multiple of this many bytes (the format's own rule).
const HEADER_ALIGNMENT: usize = 8;

/// The JSON record in the checkpoint's metadata: the progress, and the first optimiser's step count and learning
/// rate (then those of the others, for a run with several).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record<P> {
    format: String,
    progress: P,
    optimizer_steps: usize,
    learning_rate: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    more_optimizers: Vec<OptimizerRecord>,
}

/// An optimiser's counters in the record.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerRecord {
    steps: usize,
    learning_rate: f64,
}

/// One trained model in a checkpoint: its variables, stored under `prefix` + their names, with its optimiser's moments
/// under `optimizer.first.` / `optimizer.second.` + `prefix` + name. A run that trains one model has one part with an
/// empty prefix; a KL autoencoder with a discriminator has two.
#[derive(Clone, Copy)]
pub struct CheckpointPart<'a> {
    /// The prefix of the part's tensor names.
    pub prefix: &'a str,
    /// The part's variables.
    pub varmap: &'a VarMap,
}

/// The variables of `varmap` in name order.
fn named_variables(varmap: &VarMap) -> Result<Vec<(String, candle_core::Var)>> {
    let data = varmap.data().lock().map_err(|_| Error::invalid_setting("weights", "variable map lock poisoned"))?;
    let mut named: Vec<_> = data.iter().map(|(name, var)| (name.clone(), var.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

/// The variables of `varmap` as (name, tensor), in name order.
fn named_tensors(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    Ok(named_variables(varmap)?.into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect())
}

/// Writes `tensors` (and `metadata`) as a safetensors file at `path`, atomically: streamed to a temporary name one
/// tensor at a time (a checkpoint holds the weights and both moments, three times the model, and building it in
/// memory first made it the run's peak), synced, renamed. The bytes are those `safetensors::serialize` would give:
/// the tensors in its order (descending dtype, then name), the header padded with spaces to 8 bytes.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let format_error = |error: safetensors::SafeTensorError| Error::io(path, std::io::Error::other(error));
    let mut ordered: Vec<&(String, Tensor)> = tensors.iter().collect();
    ordered.sort_by(|(left_name, left), (right_name, right)| {
        View::dtype(right).cmp(&View::dtype(left)).then(left_name.cmp(right_name))
    });
    let mut offset = 0;
    let mut infos = Vec::with_capacity(ordered.len());
    for (name, tensor) in &ordered {
        let data_offsets = (offset, offset + tensor.data_len());
        offset = data_offsets.1;
        infos.push((
            name.clone(),
            TensorInfo { dtype: View::dtype(&tensor), shape: tensor.dims().to_vec(), data_offsets },
        ));
    }
    let header = Metadata::new(metadata, infos).map_err(format_error)?;
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    header.resize(header.len().next_multiple_of(HEADER_ALIGNMENT), b' ');
    write_atomic_with(path, |temporary| {
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(temporary)?);
        writer.write_all(&(header.len() as u64).to_le_bytes())?;
        writer.write_all(&header)?;
        for (_, tensor) in &ordered {
            writer.write_all(&tensor.data())?;
        }
        writer.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
}

/// Writes the weights in `varmap` to `path` (a plain safetensors file, e.g. `model.safetensors`), atomically.
pub fn save_weights(path: &Path, varmap: &VarMap) -> Result<()> {
    save_weights_where(path, varmap, |_| true)
}

/// Writes the weights in `varmap` whose names `keep` accepts to `path`, atomically.
pub fn save_weights_where(path: &Path, varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Result<()> {
    let tensors: Vec<_> = named_tensors(varmap)?.into_iter().filter(|(name, _)| keep(name)).collect();
    write_safetensors(path, &tensors, None)
}

/// Writes `checkpoint` with the weights in `varmap` to `path`, atomically.
pub fn save_checkpoint(path: &Path, checkpoint: &Checkpoint, varmap: &VarMap) -> Result<()> {
    let part = CheckpointPart { prefix: "", varmap };
    save_checkpoint_parts(path, &checkpoint.progress, &[(part, &checkpoint.optimizer)])
}

/// Writes a checkpoint of several models, each with its optimiser's state, and the run's `progress`, to `path`,
/// atomically: one file, so the parts can never come from two different moments.
pub fn save_checkpoint_parts<P: serde::Serialize>(
    path: &Path,
    progress: &P,
    parts: &[(CheckpointPart, &OptimizerState)],
) -> Result<()> {
    let mut tensors = Vec::new();
    for (part, optimizer) in parts {
        let prefix = part.prefix;
        tensors
            .extend(named_tensors(part.varmap)?.into_iter().map(|(name, tensor)| (format!("{prefix}{name}"), tensor)));
        for (name, first, second) in &optimizer.moments {
            tensors.push((format!("{FIRST_MOMENT}{prefix}{name}"), first.clone()));
            tensors.push((format!("{SECOND_MOMENT}{prefix}{name}"), second.clone()));
        }
    }
    let mut optimizers =
        parts.iter().map(|(_, state)| OptimizerRecord { steps: state.steps, learning_rate: state.learning_rate });
    let first = optimizers.next().ok_or_else(|| Error::invalid_setting("checkpoint", "no model to save"))?;
    let record = Record {
        format: FORMAT.to_string(),
        progress,
        optimizer_steps: first.steps,
        learning_rate: first.learning_rate,
        more_optimizers: optimizers.collect(),
    };
    let text = serde_json::to_string(&record).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    write_safetensors(path, &tensors, Some(HashMap::from([(METADATA_KEY.to_string(), text)])))
}

/// Reads the checkpoint at `path`, setting the variables of `varmap` (a model of the run's architecture) to its
/// weights. Every variable and both its moments must be there with the variable's shape, the weights finite, and
/// nothing else: an error names the file and the tensor or field.
pub fn load_checkpoint(path: &Path, varmap: &VarMap, device: &Device) -> Result<Checkpoint> {
    let (progress, mut optimizers) = load_checkpoint_parts(path, &[CheckpointPart { prefix: "", varmap }], device)?;
    let optimizer = optimizers.pop().ok_or_else(|| Error::bad_input(path, "optimizer", "is missing"))?;
    Ok(Checkpoint { progress, optimizer })
}

/// Reads the checkpoint at `path` written by [`save_checkpoint_parts`] for the same `parts`: sets each part's
/// variables, and gives the progress and each part's optimiser state. The checks are [`load_checkpoint`]'s.
pub fn load_checkpoint_parts<P: serde::de::DeserializeOwned>(
    path: &Path,
    parts: &[CheckpointPart],
    device: &Device,
) -> Result<(P, Vec<OptimizerState>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let record: Record<P> = read_record(path, &bytes)?;
    let counters: Vec<OptimizerRecord> =
        std::iter::once(OptimizerRecord { steps: record.optimizer_steps, learning_rate: record.learning_rate })
            .chain(record.more_optimizers)
            .collect();
    if counters.len() != parts.len() {
        let problem = format!("holds {} optimiser(s), this run has {}", counters.len(), parts.len());
        return Err(Error::bad_input(path, "optimizers", problem));
    }
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::bad_input(path, "tensors", e.to_string()))?;
    let mut states = Vec::with_capacity(parts.len());
    for (part, counter) in parts.iter().zip(counters) {
        let moments = take_part(path, part, &mut tensors)?;
        states.push(OptimizerState { steps: counter.steps, learning_rate: counter.learning_rate, moments });
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(Error::bad_input(path, extra.as_str(), "is not a weight of this model"));
    }
    Ok((record.progress, states))
}

/// The JSON record in the metadata of the safetensors file `bytes` (read from `path`), its format checked.
fn read_record<P: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<Record<P>> {
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::bad_input(path, "header", e.to_string()))?;
    let text = metadata.metadata().as_ref().and_then(|entries| entries.get(METADATA_KEY)).ok_or_else(|| {
        Error::bad_input(path, "metadata", format!("no `{METADATA_KEY}` entry: not a checkpoint written by elbo"))
    })?;
    let field = format!("metadata `{METADATA_KEY}`");
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::bad_input(path, field.as_str(), e.to_string()))?;
    let found = value.get("format").and_then(|format| format.as_str()).unwrap_or_default();
    if found != FORMAT {
        return Err(Error::bad_input(path, "format", format!("is `{found}`, this elbo reads `{FORMAT}`")));
    }
    serde_json::from_value(value).map_err(|e| Error::bad_input(path, field, e.to_string()))
}

/// Sets the variables of `part` from `tensors` (taking them out), and gives their optimiser moments.
fn take_part(
    path: &Path,
    part: &CheckpointPart,
    tensors: &mut HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor, Tensor)>> {
    let mut take = |name: &str, like: &Tensor| -> Result<Tensor> {
        let tensor = tensors.remove(name).ok_or_else(|| Error::bad_input(path, name, "is missing"))?;
        if tensor.dims() != like.dims() || tensor.dtype() != like.dtype() {
            let problem = format!(
                "is {:?} {:?}, the model's is {:?} {:?}",
                tensor.dtype(),
                tensor.dims(),
                like.dtype(),
                like.dims()
            );
            return Err(Error::bad_input(path, name, problem));
        }
        check_finite(path, name, &tensor)?;
        Ok(tensor)
    };
    let prefix = part.prefix;
    let mut moments = Vec::new();
    for (name, var) in named_variables(part.varmap)? {
        var.set(&take(&format!("{prefix}{name}"), var.as_tensor())?)?;
        let first = take(&format!("{FIRST_MOMENT}{prefix}{name}"), var.as_tensor())?;
        let second = take(&format!("{SECOND_MOMENT}{prefix}{name}"), var.as_tensor())?;
        moments.push((name, first, second));
    }
    Ok(moments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn the_streamed_file_is_byte_for_byte_what_safetensors_serialize_gives() {
        let device = Device::Cpu;
        let tensors = vec![
            ("b.weight".to_string(), Tensor::arange(0f32, 12.0, &device).unwrap().reshape((3, 4)).unwrap()),
            ("a.bias".to_string(), Tensor::new(&[1.5f32, -2.0, 0.25], &device).unwrap()),
            ("counts".to_string(), Tensor::new(&[7u8, 9, 11], &device).unwrap()),
            ("z.wide".to_string(), Tensor::ones(5, DType::F64, &device).unwrap()),
        ];
        let metadata = HashMap::from([(METADATA_KEY.to_string(), "{\"step\": 3}".to_string())]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_safetensors(&path, &tensors, Some(metadata.clone())).unwrap();
        let expected =
            safetensors::serialize(tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)), Some(metadata))
                .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
