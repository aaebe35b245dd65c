//! GroupNorm's normalize-scale-shift (and SiLU) over one group, in one pass over its values, for the
//! AutoencoderKL's inference path; `model::autoencoder_kl::norm` holds it to candle's `GroupNorm` in a test.

/// One group in place: its channels' `plane` values each normalized with the group's statistics, then scaled by
/// the channel's weight and shifted by its bias: y = (x - mean) * rstd * w + b, then silu(y) when asked.
pub(crate) fn normalize_group(group: &mut [f32], plane: usize, weight: &[f32], bias: &[f32], eps: f64, silu: bool) {
    let n = group.len() as f64;
    let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    // var = mean (x - mean)^2, rstd = 1 / sqrt(var + eps)
    let variance = group.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (variance + eps).sqrt();
    for (channel, values) in group.chunks_exact_mut(plane).enumerate() {
        let scale = (rstd * f64::from(weight[channel])) as f32;
        let shift = f64::from(bias[channel]) as f32 - (mean as f32) * scale;
        if silu {
            // silu(y) = y / (1 + e^-y)
            values.iter_mut().for_each(|v| {
                let y = *v * scale + shift;
                *v = y / (1.0 + (-y).exp());
            });
        } else {
            values.iter_mut().for_each(|v| *v = *v * scale + shift);
        }
    }
}
