//! Using elbo as a library: train a small VAE on the built-in sprites, then encode and decode a batch.
//!
//! Run with `cargo run --release --example library`.

use candle_core::{DType, Device};
use elbo::data::{self, batch_tensor, sprites::SpriteConfig, Batcher, DataSpec};
use elbo::model::{Vae, VaeConfig};
use elbo::training::{train, TrainConfig};

fn main() -> elbo::Result<()> {
    let device = Device::Cpu;
    let spec = DataSpec::Sprites(SpriteConfig { size: 28, count: 5_000, seed: 1, full_grid: false });
    let splits = data::load(&spec, 0.1, 1)?;
    let config = VaeConfig { input_shape: splits.train.shape, latent_dim: 8, ..VaeConfig::default() };
    let (vae, varmap) = Vae::fresh(&config, 1, DType::F32, &device)?;
    let outcome =
        train(&vae, &varmap, &splits, &TrainConfig { epochs: 3, ..TrainConfig::default() }, &device, &mut [])?;
    if let Some(last) = outcome.last_epoch {
        println!(
            "held-out negative ELBO (an upper bound on -log p(x)): {:.2} nats",
            last.held_out.unwrap().negative_elbo()
        );
    }

    let (values, rows) = Batcher::sequential(&splits.test, 4).next_batch().expect("a held-out batch");
    let x = batch_tensor(values, rows, splits.test.shape.dim(), &device)?;
    let posterior = vae.encode(&x)?; // q(z|x): mu and log sigma^2
    let kl = posterior.kl_to_standard_normal()?; // closed form, per example
    let reconstruction = vae.decode_mean(&posterior.mu)?; // pixel means in [0, 1]
    println!("KL per example: {:?}", kl.to_vec1::<f32>()?);
    println!("reconstruction shape: {:?}", reconstruction.shape());
    Ok(())
}
