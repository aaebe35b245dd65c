//! diffusers-compatible KL autoencoders against diffusers' own outputs.
//!
//! The fixtures under `tests/fixtures/autoencoder_kl/` were written by `scripts/make_autoencoder_kl_fixtures.py`
//! (diffusers' `save_pretrained` on small random-weight models, and diffusers' outputs for fixed inputs); these tests
//! need neither Python nor diffusers. Tolerance: |elbo - diffusers| <= 1e-4 * max(1, |diffusers|) for every value,
//! i.e. absolute 1e-4 for values up to 1 and relative 1e-4 above.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use elbo::model::autoencoder_kl::{self, kl_per_example, AutoencoderKl, AutoencoderKlConfig, Tiles};

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/autoencoder_kl").join(name)
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn open(name: &str) -> AutoencoderKl {
    autoencoder_kl::load(&fixture(name), DType::F32, &Device::Cpu).unwrap()
}

/// The largest |a - b| / max(1, |b|) over all values.
fn worst_error(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.abs().unwrap().maximum(1f32).unwrap();
    let error = ((a - b).unwrap().abs().unwrap() / scale).unwrap();
    error.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let error = worst_error(a, b);
    println!("{what}: worst error {error:.2e}");
    assert!(error <= TOLERANCE, "{what}: elbo and diffusers differ by {error} (tolerance {TOLERANCE})");
}

fn matches_diffusers(name: &str) {
    let model = open(name);
    let expected = expected(name);
    let posterior = model.encode(&expected["x"]).unwrap();
    assert_close(&format!("{name} mean"), &posterior.mu, &expected["mean"]);
    assert_close(&format!("{name} logvar"), &posterior.log_var, &expected["logvar"]);
    assert_close(&format!("{name} decoded"), &model.decode(&expected["z"]).unwrap(), &expected["decoded"]);
}

#[test]
fn two_blocks_with_attention_match_diffusers() {
    matches_diffusers("two_blocks_attention");
}

#[test]
fn three_blocks_without_attention_from_f16_weights_match_diffusers() {
    matches_diffusers("three_blocks_no_attention_f16");
}

#[test]
fn legacy_attention_names_from_bf16_weights_match_diffusers() {
    matches_diffusers("legacy_attention_bf16");
}

#[test]
fn tiled_encoding_and_decoding_match_diffusers_enable_tiling() {
    let model = open("tiled");
    let expected = expected("tiled");
    let posterior = model.encode_tiled(&expected["x"]).unwrap();
    assert_close("tiled mean", &posterior.mu, &expected["tiled_mean"]);
    assert_close("tiled logvar", &posterior.log_var, &expected["tiled_logvar"]);
    assert_close("tiled decoded", &model.decode_tiled(&expected["z"]).unwrap(), &expected["tiled_decoded"]);
    matches_diffusers("tiled");
}

/// The mean |tiled - whole| over the rows and columns in `band` after a seam, and over the rest.
fn seam_and_interior_error(
    tiled: &Tensor,
    whole: &Tensor,
    seams: &[usize],
    band: std::ops::Range<usize>,
) -> (f32, f32) {
    let (_, _, height, width) = tiled.dims4().unwrap();
    let difference: Vec<f32> = (tiled - whole).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let near = |i: usize| seams.iter().any(|&s| i >= s + band.start && i < s + band.end);
    let (mut seam, mut interior) = ((0.0, 0usize), (0.0, 0usize));
    for (index, value) in difference.iter().enumerate() {
        let (row, column) = ((index / width) % height, index % width);
        let slot = if near(row) || near(column) { &mut seam } else { &mut interior };
        slot.0 += value;
        slot.1 += 1;
    }
    (seam.0 / seam.1.max(1) as f32, interior.0 / interior.1.max(1) as f32)
}

/// A local network: the 3 x 3 box blur with zero padding, a different value only where it reads the padding.
fn blur(x: &Tensor) -> elbo::Result<Tensor> {
    let kernel = Tensor::full(1f32 / 9.0, (1, 1, 3, 3), &Device::Cpu)?;
    Ok(x.conv2d(&kernel, 1, 1, 1, 1)?)
}

#[test]
fn tiles_of_a_local_network_differ_from_the_whole_only_in_the_blended_bands() {
    // tiles of 16 start every 12 and blend their first 4 rows and columns into the tile before: bands [12k, 12k + 4)
    let tiles = Tiles { input_tile: 16, output_tile: 16 };
    let x = Tensor::rand(-1f32, 1.0, (1, 1, 40, 48), &Device::Cpu).unwrap();
    let (tiled, whole) = (tiles.apply(&x, blur).unwrap(), blur(&x).unwrap());
    let (seam, interior) = seam_and_interior_error(&tiled, &whole, &[12, 24, 36], 0..4);
    println!("tiled vs whole 3 x 3 blur: mean |difference| {seam:.4} in the blended bands, {interior:.1e} elsewhere");
    assert!(interior < 1e-6 && seam > 1e-3, "{seam} {interior}");
}

#[test]
fn tiled_decoding_of_a_random_model_stays_the_size_and_close_in_scale() {
    // Each tile of a random-weight model sees only its own latents (its own GroupNorm statistics, its own
    // attention), so tiled and whole decoding differ everywhere; diffusers' tiling does the same (see
    // tiled_encoding_and_decoding_match_diffusers_enable_tiling). Here only the size and the scale are held.
    let model = open("tiled");
    let z = &expected("tiled")["z"];
    let (tiled, whole) = (model.decode_tiled(z).unwrap(), model.decode(z).unwrap());
    assert_eq!(tiled.dims(), whole.dims());
    let mean = |t: &Tensor| t.abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    let ratio = mean(&tiled) / mean(&whole);
    println!("random model: mean |tiled| / mean |whole| = {ratio:.3}");
    assert!((0.5..2.0).contains(&ratio), "{ratio}");
}

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture(name).join(file), to.join(file)).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

fn load_error(dir: &Path) -> String {
    autoencoder_kl::load(dir, DType::F32, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn an_unknown_class_name_is_an_error_naming_the_config_and_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("two_blocks_attention", dir.path());
    edit_config(dir.path(), |config| config["_class_name"] = "VQModel".into());
    let message = load_error(dir.path());
    assert!(
        message.contains("config.json") && message.contains("_class_name") && message.contains("VQModel"),
        "{message}"
    );
    assert!(!autoencoder_kl::is_autoencoder_kl_dir(dir.path()));
}

#[test]
fn a_config_disagreeing_with_the_weights_names_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("two_blocks_attention", dir.path());
    edit_config(dir.path(), |config| config["latent_channels"] = 5.into());
    let message = load_error(dir.path());
    assert!(message.contains("diffusion_pytorch_model.safetensors"), "{message}");
    assert!(message.contains("quant_conv.weight") && message.contains("shape"), "{message}");
}

#[test]
fn a_missing_tensor_names_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("two_blocks_attention", dir.path());
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    tensors.remove("decoder.up_blocks.0.upsamplers.0.conv.weight");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let message = load_error(dir.path());
    assert!(
        message.contains("decoder.up_blocks.0.upsamplers.0.conv.weight") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn image_sizes_the_downsampling_cannot_take_are_refused() {
    let model = open("three_blocks_no_attention_f16");
    let message = model.check_image_size((24, 18), "photo.png").unwrap_err().to_string();
    assert!(message.contains("photo.png") && message.contains("multiples of 4"), "{message}");
    model.check_image_size((24, 16), "photo.png").unwrap();
}

#[test]
fn scaling_takes_the_shift_off_then_multiplies_and_inverts() {
    let model = open("three_blocks_no_attention_f16");
    let z = Tensor::new(&[[1.1f32]], &Device::Cpu).unwrap();
    let scaled = model.scale_latents(&z).unwrap();
    let value = scaled.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((value - 0.18215).abs() < 1e-6, "(1.1 - 0.1) * 0.18215, got {value}");
    let back = model.unscale_latents(&scaled).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((back - 1.1).abs() < 1e-6);
}

#[test]
fn a_fresh_model_trains_gradients_reach_the_encoder_through_the_sample() {
    let config: AutoencoderKlConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 8], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 4, "latent_channels": 2}"#,
    )
    .unwrap();
    let varmap = VarMap::new();
    let model = AutoencoderKl::new(config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::rand(-1f32, 1.0, (2, 3, 8, 8), &Device::Cpu).unwrap();
    let posterior = model.encode(&x).unwrap();
    let eps = Tensor::randn(0f32, 1.0, posterior.mu.shape(), &Device::Cpu).unwrap();
    let z = posterior.reparameterize(&eps).unwrap();
    let reconstruction = model.decode(&z).unwrap();
    assert_eq!(reconstruction.dims(), x.dims());
    let loss = ((reconstruction - &x).unwrap().sqr().unwrap().sum_all().unwrap()
        + kl_per_example(&posterior).unwrap().sum_all().unwrap())
    .unwrap();
    let gradients = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let names = ["encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_q.weight", "decoder.conv_out.bias"];
    for name in names {
        let var: &Var = data.get(name).unwrap_or_else(|| panic!("{name} not created"));
        let gradient = gradients.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = gradient.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm^2 {norm}");
    }
}

/// Writes `count` RGB PNGs of `height` x `width` named `img{i}.png` into `dir`, in reverse order.
fn write_images(dir: &Path, count: usize, (height, width): (u32, u32)) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..count)
        .rev()
        .map(|i| {
            let image = image::RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([(x * 5 + i as u32 * 40) as u8, (y * 6) as u8, 90])
            });
            let path = dir.join(format!("img{i}.png"));
            image.save(&path).unwrap();
            path
        })
        .collect()
}

#[test]
fn image_folders_encode_in_name_order_and_reconstruct_with_psnr_and_ssim() {
    use elbo::latent::autoencoder_kl::*;
    let dir = tempfile::tempdir().unwrap();
    write_images(&dir.path().join("images"), 2, (16, 24));
    let model = open("two_blocks_attention");
    let files = image_files(&dir.path().join("images")).unwrap();
    let options = KlImageOptions { size: None, tiling: true };
    let choice = LatentChoice { sample_seed: None, scaled: true };
    let array = encode_images(&model, &files, options, choice, &Device::Cpu).unwrap();
    assert_eq!((array.shape, array.names.clone()), ([2, 3, 8, 12], vec!["img0.png".to_string(), "img1.png".into()]));
    let (images, shape) = decode_latent_array(&model, &array.values, array.shape, (true, true), &Device::Cpu).unwrap();
    assert_eq!((images.len(), shape.height, shape.width), (2 * 3 * 16 * 24, 16, 24));
    let rows = reconstruct_images(&model, &files, options, &dir.path().join("out"), &Device::Cpu).unwrap();
    assert!(rows.iter().all(|r| r.psnr.is_finite() && (-1.0..=1.0).contains(&r.ssim)), "{rows:?}");
    let csv = std::fs::read_to_string(dir.path().join("out/metrics.csv")).unwrap();
    assert!(csv.starts_with("name,psnr_db,ssim\nimg0.png,") && csv.contains("\nmean,"), "{csv}");
    assert_eq!(image::open(dir.path().join("out/img1.png")).unwrap().width(), 48);
    let odd = write_images(&dir.path().join("odd"), 1, (15, 24));
    let message = encode_images(&model, &odd, options, choice, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("img0.png") && message.contains("multiples of 2"), "{message}");
}

#[test]
fn the_commands_take_a_diffusers_directory_as_run() {
    let dir = tempfile::tempdir().unwrap();
    write_images(&dir.path().join("images"), 2, (16, 24));
    let elbo = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_elbo")).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let run = fixture("two_blocks_attention");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    elbo(&["encode", "--run", run.to_str().unwrap(), "--data", &path("images"), "--out", &path("z.npy")]);
    elbo(&["decode", "--run", run.to_str().unwrap(), "--latents", &path("z.npy"), "--out", &path("decoded")]);
    elbo(&["reconstruct", "--run", run.to_str().unwrap(), "--data", &path("images"), "--out", &path("rec")]);
    assert_eq!(std::fs::read_to_string(dir.path().join("z.names.txt")).unwrap(), "img0.png\nimg1.png\n");
    assert!(dir.path().join("rec/metrics.csv").is_file());
    // decoded images take the names the encoder wrote beside the latents, and indices without them
    assert!(dir.path().join("decoded/img0.png").is_file() && dir.path().join("decoded/img1.png").is_file());
    std::fs::remove_file(dir.path().join("z.names.txt")).unwrap();
    elbo(&["decode", "--run", run.to_str().unwrap(), "--latents", &path("z.npy"), "--out", &path("by_index")]);
    assert!(dir.path().join("by_index/0.png").is_file() && dir.path().join("by_index/1.png").is_file());
}
