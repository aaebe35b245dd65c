//! The loss terms of latent diffusion's KL autoencoder (CompVis/latent-diffusion `LPIPSWithDiscriminator`, with
//! taming-transformers' discriminator losses): a Laplace reconstruction with a learned log-scale, the KL, and an
//! adversarial term against a [`crate::model::PatchDiscriminator`] whose weight adapts to the gradients at the
//! decoder's last layer.
//!
//! One training step of that recipe, with `kl` the posterior's KL summed per example and averaged over the batch:
//!
//! ```text
//! factor      = discriminator_factor * adopt_weight(step, discriminator_start)
//! autoencoder = nll + kl_weight * kl + adaptive_weight(|grad nll|, |grad g|, discriminator_weight) * factor * g
//!               where nll = laplace_reconstruction(x, x_hat, log_scale, p_weight * LPIPS(x, x_hat) when asked),
//!               g = generator_loss(D(x_hat))
//! discriminator = factor * discriminator_loss(kind, D(x), D(x_hat))   (x_hat detached)
//! ```
//!
//! The gradients are taken at the decoder's last layer weight with [`gradient_norm`]. Latent diffusion adds the LPIPS
//! perceptual distance to the reconstruction error, `|x - x_hat| + perceptual_weight * LPIPS(x, x_hat)`, inside the
//! learned scale; [`laplace_reconstruction`] takes it when the run has an LPIPS network
//! ([`crate::model::Lpips`], from a file the user supplies).

use candle_core::{DType, Tensor, Var};

use crate::model::Activation;
use crate::{Error, Result};

/// Added to the generator's gradient norm in the adaptive weight, against a division by zero (latent diffusion's
/// 1e-4).
const GRADIENT_NORM_EPS: f64 = 1e-4;
/// The largest adaptive weight, before the discriminator weight multiplies it (latent diffusion's clamp).
const MAX_ADAPTIVE_WEIGHT: f64 = 1e4;

/// How the discriminator is scored on real and reconstructed images (taming's `disc_loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DiscriminatorLoss {
    /// 0.5 (mean(relu(1 - real)) + mean(relu(1 + fake))): taming's `hinge_d_loss`, latent diffusion's default.
    #[default]
    Hinge,
    /// 0.5 (mean(softplus(-real)) + mean(softplus(fake))): the logistic GAN loss, taming's `vanilla_d_loss`.
    Vanilla,
}

/// The discriminator's loss (a scalar) given its logits on real images and on reconstructions, of any shapes
/// (each is averaged over all its values).
pub fn discriminator_loss(kind: DiscriminatorLoss, logits_real: &Tensor, logits_fake: &Tensor) -> Result<Tensor> {
    let (real, fake) = match kind {
        // hinge: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))
        DiscriminatorLoss::Hinge => ((1.0 - logits_real)?.relu()?, (logits_fake + 1.0)?.relu()?),
        // vanilla: 0.5 * (mean(softplus(-real)) + mean(softplus(fake))), softplus(x) = max(x, 0) + log(1 + e^-|x|)
        DiscriminatorLoss::Vanilla => {
            (Activation::Softplus.apply(&logits_real.neg()?)?, Activation::Softplus.apply(logits_fake)?)
        }
    };
    Ok(((real.mean_all()? + fake.mean_all()?)? * 0.5)?)
}

/// The generator's (autoencoder's) adversarial loss given the discriminator's logits on reconstructions:
/// g = -mean(logits_fake).
pub fn generator_loss(logits_fake: &Tensor) -> Result<Tensor> {
    Ok(logits_fake.mean_all()?.neg()?)
}

/// |x - x_hat| value by value, after checking that the shapes agree and there is a batch dimension.
fn absolute_error(x: &Tensor, reconstruction: &Tensor) -> Result<Tensor> {
    if x.dims() != reconstruction.dims() || x.rank() == 0 || x.dim(0)? == 0 {
        return Err(Error::ShapeMismatch(format!(
            "images {:?} and reconstructions {:?} must have the same non-empty [batch, ...] shape",
            x.dims(),
            reconstruction.dims()
        )));
    }
    Ok((x - reconstruction)?.abs()?)
}

/// Latent diffusion's reconstruction term (`nll_loss`): the negative log-likelihood of `x` under a Laplace
/// distribution centred on `reconstruction` with a learned log-scale, up to constants, summed over every value and
/// averaged over the batch (the first dimension). `log_scale` (latent diffusion's `logvar`, a scalar parameter
/// there) broadcasts against the images.
///
/// `perceptual`, when given, is `perceptual_weight * LPIPS(x, x_hat)` per image (`[batch]`), which latent diffusion
/// adds to every value's absolute error before the scale divides it (`rec_loss = |x - x_hat| + p_weight * p_loss`).
/// See [`mean_absolute_error`] for the plain L1 figure to log.
pub fn laplace_reconstruction(
    x: &Tensor,
    reconstruction: &Tensor,
    log_scale: &Tensor,
    perceptual: Option<&Tensor>,
) -> Result<Tensor> {
    let mut error = absolute_error(x, reconstruction)?;
    let batch = x.dim(0)? as f64;
    if let Some(per_image) = perceptual {
        // rec_loss = |x - x_hat| + perceptual_weight * LPIPS(x, x_hat), each image's distance on each of its values
        let mut shape = vec![1; x.rank()];
        shape[0] = x.dim(0)?;
        error = error.broadcast_add(&per_image.reshape(shape)?)?;
    }
    // nll = |x - x_hat| / exp(log_scale) + log_scale; returned as sum(nll) / batch.
    let nll = error.broadcast_div(&log_scale.exp()?)?.broadcast_add(log_scale)?;
    Ok((nll.sum_all()? / batch)?)
}

/// The mean absolute error between `x` and `reconstruction` (a scalar): mean(|x - x_hat|), the L1 figure to log.
pub fn mean_absolute_error(x: &Tensor, reconstruction: &Tensor) -> Result<Tensor> {
    Ok(absolute_error(x, reconstruction)?.mean_all()?)
}

/// Taming's `adopt_weight` as a factor: 0 before step `start`, 1 from it on (`step` counted as `start` is, latent
/// diffusion's `global_step`: the number of optimisation steps already taken).
pub fn adopt_weight(step: usize, start: usize) -> f64 {
    if step >= start {
        1.0
    } else {
        0.0
    }
}

/// Latent diffusion's adaptive weight of the adversarial term (`calculate_adaptive_weight`), from the norms of the
/// reconstruction's and the generator loss's gradients at the decoder's last layer:
/// clamp(|grad nll| / (|grad g| + 1e-4), 0, 1e4) * discriminator_weight. A NaN norm gives NaN.
pub fn adaptive_weight(
    reconstruction_gradient_norm: f64,
    generator_gradient_norm: f64,
    discriminator_weight: f64,
) -> f64 {
    let ratio = reconstruction_gradient_norm / (generator_gradient_norm + GRADIENT_NORM_EPS);
    ratio.clamp(0.0, MAX_ADAPTIVE_WEIGHT) * discriminator_weight
}

/// The Euclidean norm of the gradient of the scalar `loss` with respect to `wrt` (as torch's
/// `torch.norm(torch.autograd.grad(loss, wrt)[0])`), 0 when `loss` does not depend on it. It runs a full backward
/// pass of `loss`; the graph stays usable for the training step's own backward pass.
pub fn gradient_norm(loss: &Tensor, wrt: &Var) -> Result<f64> {
    if loss.elem_count() != 1 {
        return Err(Error::ShapeMismatch(format!("the gradient norm needs a scalar loss, not {:?}", loss.dims())));
    }
    let grads = loss.backward()?;
    match grads.get(wrt.as_tensor()) {
        Some(gradient) => Ok(gradient.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?),
        None => Ok(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vector(values: &[f64]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn scalar(tensor: &Tensor) -> f64 {
        tensor.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    fn assert_close(found: f64, expected: f64, tolerance: f64) {
        assert!((found - expected).abs() <= tolerance, "{found} != {expected}");
    }

    /// real = [2, 0.5, -1], fake = [-3, 0, 0.25].
    fn logits() -> (Tensor, Tensor) {
        (vector(&[2.0, 0.5, -1.0]), vector(&[-3.0, 0.0, 0.25]))
    }

    #[test]
    fn hinge_loss_by_hand() {
        let (real, fake) = logits();
        // relu(1 - real) = [0, 0.5, 2], mean 5/6; relu(1 + fake) = [0, 1, 1.25], mean 3/4;
        // 0.5 (5/6 + 3/4) = 19/24 = 0.791666...
        let loss = discriminator_loss(DiscriminatorLoss::Hinge, &real, &fake).unwrap();
        assert_close(scalar(&loss), 19.0 / 24.0, 1e-12);
    }

    #[test]
    fn vanilla_loss_by_hand() {
        let (real, fake) = logits();
        let softplus = |x: f64| (1.0 + x.exp()).ln();
        // softplus(-real) = ln(1 + e^-2) + ln(1 + e^-0.5) + ln(1 + e) = 0.126928 + 0.474077 + 1.313262 = 1.914268;
        // softplus(fake) = ln(1 + e^-3) + ln 2 + ln(1 + e^0.25) = 0.048587 + 0.693147 + 0.826168 = 1.567902;
        // 0.5 (1.914268 / 3 + 1.567902 / 3) = 0.580323.
        let real_part = softplus(-2.0) + softplus(-0.5) + softplus(1.0);
        let fake_part = softplus(-3.0) + softplus(0.0) + softplus(0.25);
        let expected = 0.5 * (real_part / 3.0 + fake_part / 3.0);
        assert_close(expected, 0.580323, 1e-6);
        let loss = discriminator_loss(DiscriminatorLoss::Vanilla, &real, &fake).unwrap();
        assert_close(scalar(&loss), expected, 1e-12);
    }

    #[test]
    fn vanilla_loss_is_stable_for_large_logits() {
        let tensor = |value: f32| Tensor::new(&[value], &Device::Cpu).unwrap();
        let confident = discriminator_loss(DiscriminatorLoss::Vanilla, &tensor(1000.0), &tensor(-1000.0)).unwrap();
        assert_close(scalar(&confident), 0.0, 1e-12);
        // softplus(1000) = 1000: 0.5 (1000 + 1000).
        let wrong = discriminator_loss(DiscriminatorLoss::Vanilla, &tensor(-1000.0), &tensor(1000.0)).unwrap();
        assert_close(scalar(&wrong), 1000.0, 1e-3);
    }

    #[test]
    fn generator_loss_by_hand() {
        let (_, fake) = logits();
        // -mean([-3, 0, 0.25]) = 2.75 / 3.
        assert_close(scalar(&generator_loss(&fake).unwrap()), 2.75 / 3.0, 1e-12);
    }

    #[test]
    fn adopt_weight_switches_at_start() {
        assert_eq!(adopt_weight(49_999, 50_000), 0.0);
        assert_eq!(adopt_weight(50_000, 50_000), 1.0);
        assert_eq!(adopt_weight(50_001, 50_000), 1.0);
        assert_eq!(adopt_weight(0, 0), 1.0);
    }

    /// x = [[0, 1, 2], [3, 4, 5]], x_hat = [[0.5, 1, 1], [3, 6, 4]]: |x - x_hat| sums to 0.5 + 1 + 2 + 1 = 4.5 over
    /// 6 values, batch 2.
    fn images() -> (Tensor, Tensor) {
        let x = Tensor::new(&[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], &Device::Cpu).unwrap();
        let reconstruction = Tensor::new(&[[0.5, 1.0, 1.0], [3.0, 6.0, 4.0]], &Device::Cpu).unwrap();
        (x, reconstruction)
    }

    #[test]
    fn laplace_reconstruction_by_hand() {
        let (x, reconstruction) = images();
        let log_scale = Tensor::new(0.5f64, &Device::Cpu).unwrap();
        // (4.5 / e^0.5 + 6 x 0.5) / 2 = (2.729388 + 3) / 2 = 2.864694.
        let nll = laplace_reconstruction(&x, &reconstruction, &log_scale, None).unwrap();
        assert_close(scalar(&nll), (4.5 * (-0.5f64).exp() + 3.0) / 2.0, 1e-12);
        assert_close(scalar(&nll), 2.864694, 1e-6);
        // mean(|x - x_hat|) = 4.5 / 6.
        assert_close(scalar(&mean_absolute_error(&x, &reconstruction).unwrap()), 0.75, 1e-12);
    }

    /// The perceptual distance joins each value's error inside the scale: with p = (0.1, 0.2) per image on 3 values
    /// each, sum(|x - x_hat| + p) = 4.5 + 3 x 0.3 = 5.4, so (5.4 / e^0.5 + 3) / 2.
    #[test]
    fn the_perceptual_term_is_added_to_every_value_of_its_image_inside_the_scale() {
        let (x, reconstruction) = images();
        let log_scale = Tensor::new(0.5f64, &Device::Cpu).unwrap();
        let perceptual = Tensor::new(&[0.1f64, 0.2], &Device::Cpu).unwrap();
        let nll = laplace_reconstruction(&x, &reconstruction, &log_scale, Some(&perceptual)).unwrap();
        assert_close(scalar(&nll), (5.4 * (-0.5f64).exp() + 3.0) / 2.0, 1e-12);
    }

    #[test]
    fn laplace_reconstruction_gradient_wrt_log_scale() {
        let (x, reconstruction) = images();
        let log_scale = Var::new(0.5f64, &Device::Cpu).unwrap();
        let nll = laplace_reconstruction(&x, &reconstruction, log_scale.as_tensor(), None).unwrap();
        let gradient = scalar(nll.backward().unwrap().get(log_scale.as_tensor()).unwrap());
        // d/dlog_scale = -sum(|x - x_hat|) / e^log_scale / B + numel / B = (-4.5 e^-0.5 + 6) / 2 = 1.635306.
        assert_close(gradient, (-4.5 * (-0.5f64).exp() + 6.0) / 2.0, 1e-12);
        let at = |value: f64| {
            let log_scale = Tensor::new(value, &Device::Cpu).unwrap();
            scalar(&laplace_reconstruction(&x, &reconstruction, &log_scale, None).unwrap())
        };
        let step = 1e-5;
        assert_close(gradient, (at(0.5 + step) - at(0.5 - step)) / (2.0 * step), 1e-8);
    }

    #[test]
    fn mismatched_images_are_refused() {
        let (x, _) = images();
        let log_scale = Tensor::new(0.0f64, &Device::Cpu).unwrap();
        let wrong = Tensor::zeros((3, 2), DType::F64, &Device::Cpu).unwrap();
        assert!(matches!(laplace_reconstruction(&x, &wrong, &log_scale, None), Err(Error::ShapeMismatch(_))));
        assert!(matches!(mean_absolute_error(&x, &wrong), Err(Error::ShapeMismatch(_))));
    }

    #[test]
    fn adaptive_weight_by_hand_and_clamped() {
        // 3 / (1.5 + 1e-4) x 0.5 = 0.999933...
        assert_close(adaptive_weight(3.0, 1.5, 0.5), 3.0 / 1.5001 * 0.5, 1e-12);
        // 3 / 1e-4 = 3e4, clamped to 1e4, times 0.5.
        assert_close(adaptive_weight(3.0, 0.0, 0.5), 5000.0, 1e-9);
        assert_eq!(adaptive_weight(0.0, 2.0, 0.5), 0.0);
        assert_eq!(adaptive_weight(-1.0, 2.0, 0.5), 0.0);
    }

    #[test]
    fn gradient_norm_by_hand() {
        let w = Var::new(&[1.0f64, 2.0, -1.0], &Device::Cpu).unwrap();
        let x = vector(&[0.5, -1.0, 2.0]);
        // loss = sum((w x)^2): gradient 2 w x^2 = [0.5, 4, -8], norm sqrt(0.25 + 16 + 64) = sqrt(80.25).
        let loss = w.as_tensor().mul(&x).unwrap().sqr().unwrap().sum_all().unwrap();
        assert_close(gradient_norm(&loss, &w).unwrap(), 80.25f64.sqrt(), 1e-12);
        let unrelated = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        assert_eq!(gradient_norm(&loss, &unrelated).unwrap(), 0.0);
        let not_scalar = w.as_tensor().sqr().unwrap();
        assert!(gradient_norm(&not_scalar, &w).is_err());
    }
}
