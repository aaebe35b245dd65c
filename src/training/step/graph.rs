//! The training step through candle's graph: the loss is built from tensor ops (the model's fused layers among
//! them), and candle's backward pass differentiates it. Every model, objective and device; the oracle of the fused
//! step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::{on_each_shard, Shard, StepContext, StepFigures, TrainStep};
use crate::model::Vae;
use crate::objective::{decompose_kl, log_importance_weights, log_mean_exp, negative_elbo_terms, ElboTerms};
use crate::training::config::Objective;
use crate::Result;

/// The step through candle's graph.
pub(crate) struct GraphStep;

impl TrainStep for GraphStep {
    fn run(&self, vae: &Vae, shards: &[Shard], context: &StepContext) -> Result<(StepFigures, Vec<GradStore>)> {
        let results = on_each_shard(shards, |shard| run_shard(vae, shard, context))?;
        let figures = results.iter().fold(StepFigures::default(), |sum, (part, _)| sum.plus(part));
        Ok((figures, results.into_iter().map(|(_, grads)| grads).collect()))
    }
}

/// Forward and backward on a shard: its figures (weighted by its share) and its gradients.
fn run_shard(vae: &Vae, shard: &Shard, context: &StepContext) -> Result<(StepFigures, GradStore)> {
    let terms = match context.config.objective {
        Objective::Elbo => elbo_loss(vae, shard, context)?,
        Objective::Iwae { samples } => iwae_loss(vae, shard, samples)?,
        Objective::Tcvae { tc_beta } => tcvae_loss(vae, shard, context, tc_beta)?,
    };
    let figures = figures_of(&terms)?.scaled(shard.share);
    let loss = if shard.share == 1.0 { terms.loss } else { (terms.loss * shard.share)? };
    Ok((figures, loss.backward()?)) // step 6: backprop through everything, including the encoder
}

/// Steps 1-5 of the seed: the loss reconstruction + weighted KL, batch means as scalars.
fn elbo_loss(vae: &Vae, shard: &Shard, context: &StepContext) -> Result<StepTerms> {
    let terms = negative_elbo_terms(vae, &shard.x, &shard.eps)?; // steps 1-4
    let weighted_kl = context.config.kl.weighted_kl(&terms.kl_per_dimension, context.step)?;
    StepTerms::with_weighted_kl(&terms, weighted_kl) // step 5: reconstruction + (weighted) KL
}

/// The beta-TCVAE loss: reconstruction + MI + tc_beta * TC + dimension-wise KL, batch means; the KL parts are
/// estimated with the training set's size.
fn tcvae_loss(vae: &Vae, shard: &Shard, context: &StepContext, tc_beta: f64) -> Result<StepTerms> {
    let terms = negative_elbo_terms(vae, &shard.x, &shard.eps)?;
    let parts = decompose_kl(&terms.posterior, &terms.z, context.dataset_size)?;
    StepTerms::with_weighted_kl(&terms, parts.weighted(tc_beta)?)
}

/// The negative IWAE bound with `samples` draws per example, batch mean.
fn iwae_loss(vae: &Vae, shard: &Shard, samples: usize) -> Result<StepTerms> {
    let posterior = vae.encode(&shard.x)?;
    let (log_weights, reconstruction) = log_importance_weights(vae, &shard.x, &posterior, &shard.eps, samples)?;
    let loss = log_mean_exp(&log_weights)?.mean_all()?.neg()?;
    let kl = posterior.kl_to_standard_normal()?.mean_all()?;
    Ok(StepTerms { reconstruction: reconstruction.mean_all()?, kl, weighted_kl: None, loss })
}

/// The scalar terms of one step, still on the device (the loss keeps its graph for backprop).
struct StepTerms {
    reconstruction: Tensor,
    kl: Tensor,
    weighted_kl: Option<Tensor>,
    loss: Tensor,
}

impl StepTerms {
    /// Batch means of the terms, with `weighted_kl` (a scalar) in place of the KL in the loss.
    fn with_weighted_kl(terms: &ElboTerms, weighted_kl: Tensor) -> Result<Self> {
        let reconstruction = terms.reconstruction.mean_all()?;
        let loss = (&reconstruction + &weighted_kl)?;
        Ok(StepTerms { reconstruction, kl: terms.kl.mean_all()?, weighted_kl: Some(weighted_kl), loss })
    }
}

/// The terms as numbers.
fn figures_of(terms: &StepTerms) -> Result<StepFigures> {
    let to_f64 = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)) };
    Ok(StepFigures {
        reconstruction: to_f64(&terms.reconstruction)?,
        kl: to_f64(&terms.kl)?,
        weighted_kl: terms.weighted_kl.as_ref().map(to_f64).transpose()?,
        loss: to_f64(&terms.loss)?,
    })
}
