//! Times a diffusers AutoencoderKL's CPU encode and decode in elbo: one image at a time, like
//! `bench/autoencoder_kl_bench.py` times diffusers. Prints one JSON line.
//!
//! Usage: cargo run --release --example autoencoder_kl_bench -- DIR SIDE REPEATS [tiled]
//! (RAYON_NUM_THREADS sets the threads.)

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use elbo::model::autoencoder_kl::load;

/// The allocator of the `elbo` binary, so the timing is the command line's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    elbo::runtime::configure_cpu_threads(0);
    elbo::runtime::keep_freed_memory(); // as `elbo encode/decode/reconstruct` do for an AutoencoderKL
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, side, repeats, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: autoencoder_kl_bench DIR SIDE REPEATS [tiled]");
    };
    let (side, repeats): (usize, usize) = (side.parse()?, repeats.parse()?);
    let tiled = rest.first().is_some_and(|t| t == "tiled");
    let model = load(std::path::Path::new(dir), DType::F32, &Device::Cpu)?;
    let x = Tensor::rand(-1f32, 1.0, (1, 3, side, side), &Device::Cpu)?;
    let f = model.config().downsampling();
    let z = Tensor::randn(0f32, 1.0, (1, model.config().latent_channels, side / f, side / f), &Device::Cpu)?;
    let encode = || if tiled { model.encode_tiled(&x).map(|p| p.mu) } else { model.encode(&x).map(|p| p.mu) };
    let decode = || if tiled { model.decode_tiled(&z) } else { model.decode(&z) };
    let time = |work: &dyn Fn() -> elbo::Result<Tensor>| -> anyhow::Result<f64> {
        work()?; // warm-up
        let start = Instant::now();
        for _ in 0..repeats {
            work()?;
        }
        Ok(repeats as f64 / start.elapsed().as_secs_f64())
    };
    let (encode_rate, decode_rate) = (time(&encode)?, time(&decode)?);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap_or("0 kB").trim().to_string();
    println!(
        "{{\"impl\": \"elbo\", \"side\": {side}, \"tiled\": {tiled}, \"encode_images_per_s\": {encode_rate:.5}, \
         \"decode_images_per_s\": {decode_rate:.5}, \"peak_rss\": \"{peak_kb}\"}}"
    );
    Ok(())
}
