//! Training-health diagnosis: is the latent used? The seed's pitfall: a small KL is not posterior collapse by
//! itself (the prior may simply fit); collapse is when DIFFERENT inputs produce the SAME encoder output. So the
//! verdict rests on the activity of each latent dimension across inputs and on I(x; z), not on the KL alone.

use std::fmt;

use candle_core::{DType, Device};

use super::curves::CurveReading;
use super::mutual_information::mutual_information;
use super::posterior_stats::{DimensionStats, ACTIVITY_THRESHOLD};
use crate::data::{batch_tensor, Batcher, Dataset};
use crate::latent::encode_dataset;
use crate::model::Vae;
use crate::objective::NoiseSource;
use crate::Result;

/// Below this total KL (nats per example) the KL counts as small.
pub const SMALL_KL: f64 = 1.0;

/// What the diagnosis concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    /// The latent carries information about the input.
    #[serde(rename = "healthy")]
    Healthy,
    /// Different inputs produce the same encoder output: no active units, I(x; z) ~ 0.
    #[serde(rename = "posterior collapse")]
    PosteriorCollapse,
    /// The KL is small, but the encoder output still varies with x.
    #[serde(rename = "small KL, not collapse")]
    SmallKlNotCollapse,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Healthy => "healthy",
            Verdict::PosteriorCollapse => "posterior collapse",
            Verdict::SmallKlNotCollapse => "small KL, not collapse",
        })
    }
}

/// Does the decoder use z? The reconstruction term with z from q(z|x) against z drawn from the prior instead.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatentUse {
    /// Mean -log p(x|z), z ~ q(z|x).
    pub reconstruction_from_posterior: f64,
    /// Mean -log p(x|z), z ~ p(z): what the decoder achieves without information about x.
    pub reconstruction_from_prior: f64,
    /// True when the posterior's z reconstructs clearly better (by > 0.1 nats + 1%).
    pub uses_latent: bool,
}

/// The full diagnosis of a model on a dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Diagnosis {
    /// Examples used.
    pub examples: usize,
    /// Per latent dimension: KL, activity, spread of mu, mean sigma, active.
    pub per_dimension: Vec<DimensionStats>,
    /// Dimensions with activity > 0.01.
    pub active_units: usize,
    /// Mean total KL per example, nats.
    pub total_kl: f64,
    /// I(x; z) in nats (He et al. 2019), at most log(examples).
    pub mutual_information: f64,
    /// The most the estimate can show: log(examples). A value near it means "at least this much".
    pub mutual_information_ceiling: f64,
    /// The decoder check.
    pub latent_use: LatentUse,
    /// The conclusion.
    pub verdict: Verdict,
    /// Dimensions that carry nothing (activity <= 0.01).
    pub inactive_dimensions: Vec<usize>,
    /// Why, in sentences.
    pub reasons: Vec<String>,
    /// What to try, when something is wrong.
    pub remedies: Vec<String>,
    /// What the training curves say, when they were read.
    pub curves: Option<CurveReading>,
}

/// Diagnoses `vae` on (at most `max_examples` of) `dataset`.
pub fn diagnose(vae: &Vae, dataset: &Dataset, max_examples: usize, seed: u64, device: &Device) -> Result<Diagnosis> {
    let subset = dataset.subset(&(0..dataset.len().min(max_examples.max(2))).collect::<Vec<_>>());
    let encodings = encode_dataset(vae, &subset, 500, device)?;
    let per_dimension = encodings.dimension_stats()?;
    let mutual_information = mutual_information(&encodings, seed, device)?;
    let latent_use = latent_use(vae, &subset, seed, device)?;
    let mut diagnosis = Diagnosis {
        examples: encodings.len(),
        active_units: per_dimension.iter().filter(|s| s.active).count(),
        total_kl: per_dimension.iter().map(|s| s.kl).sum(),
        inactive_dimensions: per_dimension.iter().filter(|s| !s.active).map(|s| s.dimension).collect(),
        per_dimension,
        mutual_information,
        mutual_information_ceiling: (encodings.len() as f64).ln(),
        latent_use,
        verdict: Verdict::Healthy,
        reasons: vec![],
        remedies: vec![],
        curves: None,
    };
    diagnosis.conclude();
    Ok(diagnosis)
}

fn latent_use(vae: &Vae, dataset: &Dataset, seed: u64, device: &Device) -> Result<LatentUse> {
    let (mut from_posterior, mut from_prior) = (0.0, 0.0);
    let mut batcher = Batcher::sequential(dataset, 500);
    while let Some((values, rows)) = batcher.next_batch() {
        let x = batch_tensor(values, rows, dataset.shape.dim(), device)?;
        let posterior = vae.encode(&x)?;
        let eps = NoiseSource::new(seed).like(&posterior.mu)?;
        let score = |z| -> Result<f64> {
            let nll = vae.likelihood().negative_log_prob(&vae.decode(&z)?, &x)?;
            Ok(nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        from_posterior += score(posterior.reparameterize(&eps)?)?;
        from_prior += score(eps)?;
    }
    let n = dataset.len().max(1) as f64;
    let (from_posterior, from_prior) = (from_posterior / n, from_prior / n);
    let uses_latent = from_prior - from_posterior > 0.1 + 0.01 * from_posterior.abs();
    Ok(LatentUse { reconstruction_from_posterior: from_posterior, reconstruction_from_prior: from_prior, uses_latent })
}

impl Diagnosis {
    /// Adds what the training curves say, and revises the conclusion.
    pub fn with_curves(mut self, curves: Option<CurveReading>) -> Self {
        self.curves = curves;
        self.conclude();
        self
    }

    /// Sets the verdict, the reasons and the remedies from the figures.
    fn conclude(&mut self) {
        let (active, dims, mi) = (self.active_units, self.per_dimension.len(), self.mutual_information);
        self.reasons.clear();
        self.remedies.clear();
        self.verdict = if active == 0 {
            self.reasons.push(format!("no latent dimension's mean varies with the input (every activity Cov_x(E_q[z_u]) <= {ACTIVITY_THRESHOLD}): different inputs get the same q(z|x)"));
            self.reasons.push(format!("I(x; z) = {mi:.3} nats; collapsed dimensions: all {dims}"));
            Verdict::PosteriorCollapse
        } else if self.total_kl < SMALL_KL {
            self.reasons.push(format!("the KL is small ({:.3} nats per example), but {active} dimension(s) still vary with the input and I(x; z) = {mi:.3} nats: the prior simply fits q(z|x) well", self.total_kl));
            Verdict::SmallKlNotCollapse
        } else {
            self.reasons.push(format!("{active} of {dims} latent dimensions are active (activity > {ACTIVITY_THRESHOLD}); I(x; z) = {mi:.3} nats; KL {:.3} nats per example", self.total_kl));
            Verdict::Healthy
        };
        if mi > 0.95 * self.mutual_information_ceiling {
            self.reasons.push(format!("I(x; z) reaches the estimator's ceiling log N = {:.3} nats for N = {} examples: the true value is at least this, possibly more (evaluate more examples)", self.mutual_information_ceiling, self.examples));
        }
        if active > 0 && !self.inactive_dimensions.is_empty() {
            self.reasons.push(format!("dimensions {:?} are unused (the prior fits them); the active ones carry the information, which is not collapse", self.inactive_dimensions));
        }
        self.note_decoder();
        if self.verdict == Verdict::PosteriorCollapse || !self.decoder_uses_latent() {
            self.remedies = REMEDIES.iter().map(|r| r.to_string()).collect();
        }
    }

    /// False when the decoder check or the curves say the latent is ignored.
    pub fn decoder_uses_latent(&self) -> bool {
        self.latent_use.uses_latent && !self.curves.as_ref().is_some_and(|c| c.reconstruction_stuck)
    }

    fn note_decoder(&mut self) {
        if !self.decoder_uses_latent() {
            let u = &self.latent_use;
            self.reasons.push(format!(
                "decoder is not using the latent: reconstruction {:.3} nats from z ~ q(z|x) vs {:.3} from z ~ p(z)",
                u.reconstruction_from_posterior, u.reconstruction_from_prior
            ));
        }
        if let Some(curves) = &self.curves {
            self.reasons.extend(curves.notes.iter().cloned());
        }
    }
}

/// The standard remedies for posterior collapse, with the flags that apply them.
pub const REMEDIES: [&str; 5] = [
    "KL warm-up: --warmup-epochs 10 (the KL weight rises from 0 to beta)",
    "cyclical annealing: --kl-cycles 4",
    "free bits: --free-bits 0.5 (each dimension keeps at least 0.5 nats)",
    "a smaller beta: --beta 0.5",
    "a weaker decoder: fewer or narrower --decoder-hidden layers",
];

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "latent diagnosis on {} examples", self.examples)?;
        writeln!(f, "  dim        KL   activity   spread(mu)   mean sigma   active")?;
        for s in &self.per_dimension {
            let active = if s.active { "yes" } else { "no" };
            writeln!(
                f,
                "  {:>3} {:>9.4} {:>10.4} {:>12.4} {:>12.4}   {active}",
                s.dimension, s.kl, s.activity, s.mu_spread, s.mean_sigma
            )?;
        }
        writeln!(
            f,
            "  active units: {} of {}   I(x; z): {:.3} nats   KL: {:.3} nats",
            self.active_units,
            self.per_dimension.len(),
            self.mutual_information,
            self.total_kl
        )?;
        writeln!(f, "verdict: {}", self.verdict)?;
        self.reasons.iter().try_for_each(|r| writeln!(f, "  - {r}"))?;
        if !self.remedies.is_empty() {
            writeln!(f, "remedies to try:")?;
            self.remedies.iter().try_for_each(|r| writeln!(f, "  - {r}"))?;
        }
        Ok(())
    }
}
