//! `checkpoint.safetensors`: everything a run needs to continue exactly. The model's weights under their own names
//! (so any safetensors reader can take them), the optimiser's moments under `optimizer.first.<name>` and
//! `optimizer.second.<name>`, and in the header's metadata (key `elbo`) a JSON record of where the run stands: epoch,
//! batch, step, the random streams' positions, the epoch's running sums, the optimiser's step count and learning
//! rate. One file, written atomically, so the weights and the state can never come from two different moments.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::atomic::write_atomic;
use crate::model::check_finite;
use crate::training::{Checkpoint, OptimizerState, TrainingProgress};
use crate::{Error, Result};

/// The format tag in the metadata; a later layout gets a new tag.
const FORMAT: &str = "elbo-checkpoint/1";
/// The metadata key of the JSON record.
const METADATA_KEY: &str = "elbo";
/// Name prefixes of the optimiser's moments.
const FIRST_MOMENT: &str = "optimizer.first.";
const SECOND_MOMENT: &str = "optimizer.second.";

/// The JSON record in the checkpoint's metadata.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    progress: TrainingProgress,
    optimizer_steps: usize,
    learning_rate: f64,
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

/// Writes `tensors` (and `metadata`) as a safetensors file at `path`, atomically: built in memory, written to a
/// temporary name, renamed.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)), metadata)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    write_atomic(path, &bytes)
}

/// Writes the weights in `varmap` to `path` (a plain safetensors file, e.g. `model.safetensors`), atomically.
pub fn save_weights(path: &Path, varmap: &VarMap) -> Result<()> {
    write_safetensors(path, &named_tensors(varmap)?, None)
}

/// Writes `checkpoint` with the weights in `varmap` to `path`, atomically.
pub fn save_checkpoint(path: &Path, checkpoint: &Checkpoint, varmap: &VarMap) -> Result<()> {
    let mut tensors = named_tensors(varmap)?;
    for (name, first, second) in &checkpoint.optimizer.moments {
        tensors.push((format!("{FIRST_MOMENT}{name}"), first.clone()));
        tensors.push((format!("{SECOND_MOMENT}{name}"), second.clone()));
    }
    let record = Record {
        format: FORMAT.to_string(),
        progress: checkpoint.progress.clone(),
        optimizer_steps: checkpoint.optimizer.steps,
        learning_rate: checkpoint.optimizer.learning_rate,
    };
    let text = serde_json::to_string(&record).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    write_safetensors(path, &tensors, Some(HashMap::from([(METADATA_KEY.to_string(), text)])))
}

/// Reads the checkpoint at `path`, setting the variables of `varmap` (a model of the run's architecture) to its
/// weights. Every variable and both its moments must be there with the variable's shape, the weights finite, and
/// nothing else: an error names the file and the tensor or field.
pub fn load_checkpoint(path: &Path, varmap: &VarMap, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::bad_input(path, "header", e.to_string()))?;
    let text = metadata.metadata().as_ref().and_then(|entries| entries.get(METADATA_KEY)).ok_or_else(|| {
        Error::bad_input(path, "metadata", format!("no `{METADATA_KEY}` entry: not a checkpoint written by elbo"))
    })?;
    let record: Record = serde_json::from_str(text)
        .map_err(|e| Error::bad_input(path, format!("metadata `{METADATA_KEY}`"), e.to_string()))?;
    if record.format != FORMAT {
        let problem = format!("is `{}`, this elbo reads `{FORMAT}`", record.format);
        return Err(Error::bad_input(path, "format", problem));
    }
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::bad_input(path, "tensors", e.to_string()))?;
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
    let mut moments = Vec::new();
    for (name, var) in named_variables(varmap)? {
        var.set(&take(&name, var.as_tensor())?)?;
        let first = take(&format!("{FIRST_MOMENT}{name}"), var.as_tensor())?;
        let second = take(&format!("{SECOND_MOMENT}{name}"), var.as_tensor())?;
        moments.push((name, first, second));
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(Error::bad_input(path, extra.as_str(), "is not a weight of this model"));
    }
    let optimizer = OptimizerState { steps: record.optimizer_steps, learning_rate: record.learning_rate, moments };
    Ok(Checkpoint { progress: record.progress, optimizer })
}
