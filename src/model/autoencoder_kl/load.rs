//! Loading a diffusers `AutoencoderKL` directory: `config.json` and `diffusion_pytorch_model.safetensors`.
//!
//! Weights stored in f32, f16 or bf16 are converted to the dtype asked for (f32 on the CPU). Every tensor is checked
//! against the shape the configuration implies, and a missing or misshapen tensor is an error naming the weights file
//! and the tensor. Attention weights under the names diffusers used before 0.14 (`query`, `key`, `value`,
//! `proj_attn`) are read for `to_q`, `to_k`, `to_v` and `to_out.0`, and 1 x 1 convolution-shaped attention weights
//! (`[C, C, 1, 1]`, as converted LDM checkpoints have them) for the linear `[C, C]` ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Var;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use super::config::{AutoencoderKlConfig, CLASS_NAME};
use super::AutoencoderKl;
use crate::{Error, Result};

/// The configuration file of a diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file diffusers' `save_pretrained` writes, then the name of its half-precision variant.
pub const WEIGHT_FILES: [&str; 2] = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"];
/// The legacy attention names, each with the current name it stands for.
const LEGACY_NAMES: [(&str, &str); 4] =
    [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")];

/// True when `dir` is a directory whose `config.json` names `_class_name: "AutoencoderKL"`.
pub fn is_autoencoder_kl_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else { return false };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { return false };
    value.get("_class_name").and_then(|name| name.as_str()) == Some(CLASS_NAME)
}

/// True when `dir` holds a diffusers model: a `config.json` with a `_class_name` (of any class).
pub fn is_diffusers_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else { return false };
    serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|value| value.get("_class_name").is_some())
}

/// The weights file of the diffusers directory `dir`: the full-precision name when present, else the fp16 variant.
pub fn weights_file(dir: &Path) -> Result<PathBuf> {
    WEIGHT_FILES.iter().map(|name| dir.join(name)).find(|path| path.is_file()).ok_or_else(|| {
        let problem = format!("no {} (nor {}); PyTorch .bin weights are not read", WEIGHT_FILES[0], WEIGHT_FILES[1]);
        Error::bad_input(dir, "weights", problem)
    })
}

/// Loads the KL autoencoder in the diffusers directory `dir` onto `device`, computing in `dtype`.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
    let config = AutoencoderKlConfig::read(&dir.join(CONFIG_FILE))?;
    load_weights(config, &weights_file(dir)?, dtype, device)
}

/// The model of `config` with the weights of the safetensors file `path`.
pub fn load_weights(config: AutoencoderKlConfig, path: &Path, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
    // SAFETY: the file is mapped read-only; like every memory-mapped reader, this assumes nobody truncates it while
    // the model loads (the tensors are copied out before this function returns).
    let tensors =
        unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::bad_input(path, "safetensors", e.to_string()))?;
    let problem = Arc::new(Mutex::new(None));
    let backend = CheckedTensors { tensors, problem: Arc::clone(&problem) };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
    AutoencoderKl::new(config, vb).map_err(|error| named_problem(path, &problem, error))
}

/// The problem the weight source recorded, as an error naming the weights file `path` and the tensor; `error` when
/// none was recorded.
fn named_problem(path: &Path, problem: &Mutex<Problem>, error: Error) -> Error {
    match problem.lock().ok().and_then(|mut slot| slot.take()) {
        Some((tensor, problem)) => Error::bad_input(path, tensor, problem),
        None => error,
    }
}

/// Loads the KL autoencoder in the diffusers directory `dir` as a trainable model: every weight becomes a variable
/// of the returned `VarMap` under its current diffusers name (legacy attention names and half-precision files are
/// read as [`load`] reads them), in f32 on `device`. Fine-tuning starts from it.
pub fn load_trainable(dir: &Path, device: &Device) -> Result<(AutoencoderKl, VarMap)> {
    let config = AutoencoderKlConfig::read(&dir.join(CONFIG_FILE))?;
    let path = weights_file(dir)?;
    // SAFETY: as in `load_weights`: the file is mapped read-only and copied out before this function returns.
    let tensors =
        unsafe { MmapedSafetensors::new(&path) }.map_err(|e| Error::bad_input(&path, "safetensors", e.to_string()))?;
    let problem = Arc::new(Mutex::new(None));
    let varmap = VarMap::new();
    let checked = CheckedTensors { tensors, problem: Arc::clone(&problem) };
    let backend = AsVariables { checked, varmap: varmap.clone() };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    let model = AutoencoderKl::new(config, vb).map_err(|error| named_problem(&path, &problem, error))?;
    Ok((model, varmap))
}

/// [`CheckedTensors`] whose tensors become variables of `varmap` as the model takes them.
struct AsVariables {
    checked: CheckedTensors,
    varmap: VarMap,
}

impl SimpleBackend for AsVariables {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.checked.get(shape, name, init, dtype, device)?;
        let variable = Var::from_tensor(&tensor)?;
        let mut variables =
            self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        variables.insert(name.to_string(), variable.clone());
        Ok(variable.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.checked.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.checked.contains_tensor(name)
    }
}

/// A tensor name and what is wrong with it.
type Problem = Option<(String, String)>;

/// The safetensors file as a candle weight source that checks shapes, reads legacy names, and records the first
/// problem so that the loader can name the tensor in its error.
struct CheckedTensors {
    tensors: MmapedSafetensors,
    problem: Arc<Mutex<Problem>>,
}

impl CheckedTensors {
    /// The name `name` is stored under: itself, or its legacy attention name.
    fn stored_name(&self, name: &str) -> Option<String> {
        if self.tensors.get(name).is_ok() {
            return Some(name.to_string());
        }
        LEGACY_NAMES.iter().find_map(|(current, legacy)| {
            let (prefix, suffix) = name.rsplit_once('.')?;
            let base = prefix.strip_suffix(current)?;
            let old = format!("{base}{legacy}.{suffix}");
            self.tensors.get(&old).is_ok().then_some(old)
        })
    }

    /// Records the problem with `name` and returns it as a candle error.
    fn fail(&self, name: &str, problem: String) -> candle_core::Error {
        if let Ok(mut slot) = self.problem.lock() {
            slot.get_or_insert_with(|| (name.to_string(), problem.clone()));
        }
        candle_core::Error::Msg(format!("tensor `{name}`: {problem}"))
    }
}

impl SimpleBackend for CheckedTensors {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        // a 1 x 1 convolution weight [C, C, 1, 1] stands for a linear [C, C] one
        let tensor = match (tensor.dims(), shape.dims()) {
            ([o, i, 1, 1], [o2, i2]) if (o, i) == (o2, i2) => tensor.reshape((*o, *i))?,
            _ => tensor,
        };
        if tensor.shape() != &shape {
            let problem = format!(
                "the file holds shape {:?}, the config implies {:?}: config.json's block_out_channels, \
                 latent_channels, layers_per_block or in/out_channels do not describe these weights",
                tensor.dims(),
                shape.dims()
            );
            return Err(self.fail(name, problem));
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let Some(stored) = self.stored_name(name) else {
            let problem = "missing: the config implies this tensor, the file does not hold it".to_string();
            return Err(self.fail(name, problem));
        };
        let tensor = self.tensors.load(&stored, device)?;
        match tensor.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => tensor.to_dtype(dtype),
            other => Err(self.fail(name, format!("stored as {other:?}: expected f32, f16 or bf16"))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.stored_name(name).is_some()
    }
}
