//! A KL autoencoder written as diffusers writes one (`save_pretrained`): `config.json` and
//! `diffusion_pytorch_model.safetensors` with diffusers' weight names, so `AutoencoderKL.from_pretrained(DIR)`
//! loads a model elbo trained, and elbo loads it back with [`crate::model::autoencoder_kl::load()`].

use std::path::Path;

use candle_nn::VarMap;

use super::checkpoint_file::save_weights_where;
use crate::atomic::write_json;
use crate::model::autoencoder_kl::load::{CONFIG_FILE, WEIGHT_FILES};
use crate::model::AutoencoderKlConfig;
use crate::{Error, Result};

/// The diffusers version whose layout the files follow, written as `_diffusers_version`.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The name prefixes of the autoencoder's own weights; anything else in a training run's variables (the learned
/// scale of the reconstruction term, a discriminator) is not part of the diffusers model.
pub const MODEL_PREFIXES: [&str; 4] = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."];

/// True when `name` is one of the autoencoder's weights (see [`MODEL_PREFIXES`]).
pub fn is_model_weight(name: &str) -> bool {
    MODEL_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Writes the model of `config` with the weights in `varmap` to the directory `dir` (created if needed): the weights
/// first, then the configuration, each atomically, so a stop in between leaves the previous configuration beside
/// new weights of the same architecture, never a half-written file.
pub fn save_pretrained(dir: &Path, config: &AutoencoderKlConfig, varmap: &VarMap) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_weights_where(&dir.join(WEIGHT_FILES[0]), varmap, is_model_weight)?;
    let config = AutoencoderKlConfig { diffusers_version: Some(DIFFUSERS_VERSION.to_string()), ..config.clone() };
    write_json(&dir.join(CONFIG_FILE), &config)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::model::autoencoder_kl::load;
    use crate::model::AutoencoderKl;

    fn small_config() -> AutoencoderKlConfig {
        AutoencoderKlConfig {
            block_out_channels: vec![8, 16],
            down_block_types: vec!["DownEncoderBlock2D".into(); 2],
            up_block_types: vec!["UpDecoderBlock2D".into(); 2],
            norm_num_groups: 4,
            latent_channels: 2,
            sample_size: crate::model::autoencoder_kl::SampleSize::Square(16),
            ..AutoencoderKlConfig::default()
        }
    }

    #[test]
    fn a_saved_model_loads_back_with_the_same_outputs_and_without_foreign_variables() {
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let config = small_config();
        let model = AutoencoderKl::new(config.clone(), VarBuilder::from_varmap(&varmap, DType::F32, &device)).unwrap();
        crate::model::init::initialize(&varmap, 7).unwrap();
        varmap.get((1,), "loss.logvar", candle_nn::Init::Const(0.0), DType::F32, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(dir.path(), &config, &varmap).unwrap();
        let loaded = load(dir.path(), DType::F32, &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &device).unwrap();
        let (a, b) = (model.encode(&x).unwrap().mu, loaded.encode(&x).unwrap().mu);
        let difference = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // the loaded model runs the inference kernels, the trainable one the differentiable path
        assert!(difference < 1e-5, "{difference}");
        let tensors = candle_core::safetensors::load(dir.path().join(WEIGHT_FILES[0]), &device).unwrap();
        assert!(!tensors.contains_key("loss.logvar"));
        assert!(tensors.contains_key("decoder.conv_out.weight"));
        let text = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(text.contains("\"_class_name\": \"AutoencoderKL\""));
        assert!(text.contains(DIFFUSERS_VERSION));
    }
}
