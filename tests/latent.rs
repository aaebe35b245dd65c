//! The latent-space tools on a small model trained on the built-in sprites: codes round-trip through files,
//! interpolations end at the reconstructions, traversals move one dimension, and the linear probe tells a trained
//! model from an untrained one.

use std::sync::OnceLock;

use candle_core::{DType, Device};
use elbo::data::sprites::SpriteConfig;
use elbo::data::{self, DataSpec, Splits};
use elbo::latent::codes::{read_latents, write_encodings, CodeColumns};
use elbo::latent::decode::decode_latents;
use elbo::latent::interpolate::interpolate;
use elbo::latent::probe::{probe, ProbeConfig};
use elbo::latent::traverse::{traverse, Dimensions, TraversalSettings};
use elbo::latent::{encode_dataset, LabelChoice};
use elbo::model::{Vae, VaeConfig};
use elbo::outputs::pictures::reconstructions;
use elbo::training::{train, TrainConfig};

const LATENT_DIM: usize = 6;

fn splits() -> &'static Splits {
    static SPLITS: OnceLock<Splits> = OnceLock::new();
    SPLITS.get_or_init(|| {
        let spec = DataSpec::Sprites(SpriteConfig { size: 16, count: 2000, seed: 3, full_grid: false });
        data::load(&spec, 0.25, 1).unwrap()
    })
}

fn model_config() -> VaeConfig {
    VaeConfig {
        input_shape: splits().train.shape,
        latent_dim: LATENT_DIM,
        encoder_hidden: vec![64],
        decoder_hidden: vec![64],
        ..VaeConfig::default()
    }
}

fn untrained() -> Vae {
    Vae::fresh(&model_config(), 5, DType::F32, &Device::Cpu).unwrap().0
}

/// Trained once for all the tests of this file.
fn trained() -> &'static Vae {
    static VAE: OnceLock<Vae> = OnceLock::new();
    VAE.get_or_init(|| {
        let (vae, varmap) = Vae::fresh(&model_config(), 5, DType::F32, &Device::Cpu).unwrap();
        let config = TrainConfig { epochs: 20, batch_size: 32, learning_rate: 3e-3, ..TrainConfig::default() };
        train(&vae, &varmap, splits(), &config, &Device::Cpu, &mut []).unwrap();
        vae
    })
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn codes_round_trip_through_npy_and_decode_to_examples() {
    let dir = tempfile::tempdir().unwrap();
    let vae = trained();
    let test = &splits().test;
    let encodings = encode_dataset(vae, test, 64, &Device::Cpu).unwrap();
    assert_eq!((encodings.len(), encodings.mu.len()), (test.len(), test.len() * LATENT_DIM));
    let path = dir.path().join("codes.npy");
    write_encodings(&path, &encodings, CodeColumns::default()).unwrap();
    let read = read_latents(&path, LATENT_DIM).unwrap();
    assert_eq!(read, encodings.mu, "the NPY file holds exactly the in-memory mu");
    let decoded = decode_latents(vae, &read, 100, &Device::Cpu).unwrap();
    assert_eq!(decoded.len(), test.len() * test.shape.dim());
    let (_, reconstructed) = reconstructions(vae, test, &(0..test.len()).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    assert!(max_difference(&decoded, &reconstructed) < 1e-5, "decoding mu is reconstructing");
}

#[test]
fn interpolation_ends_at_the_reconstructions_of_both_inputs() {
    let vae = trained();
    let test = &splits().test;
    let (_, expected) = reconstructions(vae, test, &[3, 17], &Device::Cpu).unwrap();
    let dim = test.shape.dim();
    for spherical in [false, true] {
        let path = interpolate(vae, test, (3, 17), 7, spherical, &Device::Cpu).unwrap();
        assert_eq!(path.decoded.len(), 7 * dim);
        assert!(max_difference(&path.decoded[..dim], &expected[..dim]) < 1e-5);
        assert!(max_difference(&path.decoded[6 * dim..], &expected[dim..]) < 1e-5);
        let middle = &path.decoded[3 * dim..4 * dim];
        assert!(max_difference(middle, &expected[..dim]) > 1e-3, "the path moves between the ends");
    }
    let message = interpolate(vae, test, (0, 10_000), 5, false, &Device::Cpu).unwrap_err().to_string();
    assert!(message.contains("to") && message.contains("10000"), "{message}");
}

#[test]
fn traversal_sweeps_one_dimension_per_row_ordered_by_kl() {
    let vae = trained();
    let test = &splits().test;
    let settings = TraversalSettings { seed_index: 2, dimensions: Dimensions::All, range: 2.0, steps: 5 };
    let traversal = traverse(vae, test, &settings, 64, &Device::Cpu).unwrap();
    assert_eq!(traversal.rows.len(), LATENT_DIM);
    assert!(traversal.rows.windows(2).all(|pair| pair[0].kl >= pair[1].kl));
    let seed = encode_dataset(vae, test, 64, &Device::Cpu).unwrap().mu_row(2).to_vec();
    for (row, info) in traversal.rows.iter().enumerate() {
        for step in 0..5 {
            let at = (row * 5 + step) * LATENT_DIM;
            let code = &traversal.latents[at..at + LATENT_DIM];
            for d in (0..LATENT_DIM).filter(|&d| d != info.dimension) {
                assert_eq!(code[d], seed[d], "row {row} changed dimension {d}");
            }
            assert_eq!(code[info.dimension], -2.0 + step as f32);
        }
    }
    assert_eq!(traversal.decoded.len(), LATENT_DIM * 5 * test.shape.dim());
}

/// Held-out accuracy of the probe on the codes, and the chance level, for the sprites' factor `factor`.
fn probe_accuracy(vae: &Vae, factor: &str) -> (f64, f64) {
    let config = ProbeConfig { labels: LabelChoice::from_factor(Some(factor)), ..ProbeConfig::default() };
    let report = probe(vae, splits(), &config, 256, &Device::Cpu).unwrap();
    assert_eq!((report.classes, report.latent.features, report.raw.features), (32, LATENT_DIM, 256));
    assert_eq!(report.random_projection.features, LATENT_DIM);
    (report.latent.test_accuracy, report.chance)
}

/// An untrained encoder is a random non-linear projection of the pixels, and the sprites' position is partly
/// linear in any projection (the random-projection baseline shows it), so "near chance" is measured against the
/// trained model: the untrained probe recovers at most 60% of the trained probe's gain over chance.
#[test]
fn the_probe_beats_chance_with_a_trained_model_and_not_with_an_untrained_one() {
    let untrained = untrained();
    for factor in ["x", "y"] {
        let (trained, chance) = probe_accuracy(trained(), factor);
        let (random, _) = probe_accuracy(&untrained, factor);
        assert!(trained > 6.0 * chance, "{factor}: trained {trained} vs chance {chance}");
        assert!(
            random - chance < 0.6 * (trained - chance),
            "{factor}: untrained {random}, trained {trained}, chance {chance}"
        );
    }
}
