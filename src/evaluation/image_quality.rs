//! Distortion of reconstructed images: PSNR and SSIM (Wang, Bovik, Sheikh and Simoncelli 2004).
//!
//! Images are channels-first `[C, H, W]` values in [0, 1] (peak L = 1). SSIM uses an 11 x 11 Gaussian window of
//! sigma 1.5 over the positions where the whole window fits (the paper's and its MATLAB code's "valid" region),
//! C1 = (0.01 L)^2 and C2 = (0.03 L)^2, averaged over positions and then over channels. For an image smaller than
//! 11 pixels on a side, the window shrinks to the largest odd side that fits.

use crate::{Error, Result};

/// The side of SSIM's Gaussian window.
pub const SSIM_WINDOW: usize = 11;
/// The standard deviation of SSIM's Gaussian window, in pixels.
pub const SSIM_SIGMA: f64 = 1.5;

/// The size of one channels-first image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    /// Channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageSize {
    /// Values in one image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True for an image without pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An error unless both images hold `size` values.
fn check(a: &[f32], b: &[f32], size: ImageSize) -> Result<()> {
    if a.len() != size.len() || b.len() != size.len() || size.is_empty() {
        let problem = format!("images of {} and {} values for a {size:?} image", a.len(), b.len());
        return Err(Error::ShapeMismatch(problem));
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB: PSNR = 10 log10(L^2 / MSE) with L = 1; infinite for identical images.
pub fn psnr(a: &[f32], b: &[f32], size: ImageSize) -> Result<f64> {
    check(a, b, size)?;
    // MSE = mean (a - b)^2
    let mse = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>() / a.len() as f64;
    Ok(10.0 * (1.0 / mse).log10())
}

/// Structural similarity, the mean over channels of the mean SSIM map:
/// SSIM = ((2 mu_a mu_b + C1)(2 sigma_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2)).
pub fn ssim(a: &[f32], b: &[f32], size: ImageSize) -> Result<f64> {
    check(a, b, size)?;
    let plane = size.height * size.width;
    let window = gaussian_window(SSIM_WINDOW.min(odd_at_most(size.height.min(size.width))));
    let total: f64 = (0..size.channels)
        .map(|c| {
            let range = c * plane..(c + 1) * plane;
            channel_ssim(&a[range.clone()], &b[range], (size.height, size.width), &window)
        })
        .sum();
    Ok(total / size.channels as f64)
}

/// The largest odd number up to `n` (at least 1).
fn odd_at_most(n: usize) -> usize {
    if n % 2 == 1 {
        n
    } else {
        n.saturating_sub(1).max(1)
    }
}

/// The normalized 1-D Gaussian of `side` taps: w_i = exp(-(i - centre)^2 / (2 sigma^2)) / sum.
fn gaussian_window(side: usize) -> Vec<f64> {
    let centre = (side / 2) as f64;
    let weights: Vec<f64> =
        (0..side).map(|i| (-((i as f64 - centre).powi(2)) / (2.0 * SSIM_SIGMA.powi(2))).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// The Gaussian-weighted mean of `values` (an `height` x `width` plane) at every position where the window fits:
/// a separable filter, rows then columns. Returns the `(height - k + 1) x (width - k + 1)` means.
fn filter_valid(values: &[f64], (height, width): (usize, usize), window: &[f64]) -> Vec<f64> {
    let k = window.len();
    let (out_h, out_w) = (height + 1 - k, width + 1 - k);
    let mut across = vec![0.0; height * out_w];
    for y in 0..height {
        for x in 0..out_w {
            across[y * out_w + x] = window.iter().enumerate().map(|(i, w)| w * values[y * width + x + i]).sum();
        }
    }
    let mut out = vec![0.0; out_h * out_w];
    for y in 0..out_h {
        for x in 0..out_w {
            out[y * out_w + x] = window.iter().enumerate().map(|(i, w)| w * across[(y + i) * out_w + x]).sum();
        }
    }
    out
}

/// The mean SSIM map of one channel.
fn channel_ssim(a: &[f32], b: &[f32], sides: (usize, usize), window: &[f64]) -> f64 {
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let a: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
    let b: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
    let product = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).collect::<Vec<f64>>();
    let mean_a = filter_valid(&a, sides, window);
    let mean_b = filter_valid(&b, sides, window);
    let mean_aa = filter_valid(&product(&a, &a), sides, window);
    let mean_bb = filter_valid(&product(&b, &b), sides, window);
    let mean_ab = filter_valid(&product(&a, &b), sides, window);
    let map = (0..mean_a.len()).map(|i| {
        let (ma, mb) = (mean_a[i], mean_b[i]);
        // sigma_a^2 = E[a^2] - mu_a^2, sigma_ab = E[ab] - mu_a mu_b
        let (var_a, var_b, cov) = (mean_aa[i] - ma * ma, mean_bb[i] - mb * mb, mean_ab[i] - ma * mb);
        ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (var_a + var_b + c2))
    });
    map.sum::<f64>() / mean_a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: ImageSize = ImageSize { channels: 2, height: 16, width: 12 };

    fn image(seed: u32) -> Vec<f32> {
        (0..SIZE.len() as u32).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0).collect()
    }

    #[test]
    fn identical_images_have_ssim_one_and_infinite_psnr() {
        let a = image(1);
        assert!((ssim(&a, &a, SIZE).unwrap() - 1.0).abs() < 1e-12);
        assert!(psnr(&a, &a, SIZE).unwrap().is_infinite());
        assert!(ssim(&a, &image(2), SIZE).unwrap() < 0.5);
    }

    #[test]
    fn psnr_of_a_uniform_error_of_a_tenth_is_20_db() {
        let a = vec![0.5f32; SIZE.len()];
        let b: Vec<f32> = a.iter().map(|v| v + 0.1).collect();
        assert!((psnr(&a, &b, SIZE).unwrap() - 20.0).abs() < 1e-5);
    }

    #[test]
    fn ssim_of_two_flat_images_is_the_luminance_term() {
        // no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
        let (a, b) = (vec![0.2f32; SIZE.len()], vec![0.6f32; SIZE.len()]);
        let (x, y, c1) = (0.2f64, 0.6f64, 1e-4);
        let expected = (2.0 * x * y + c1) / (x * x + y * y + c1);
        assert!((ssim(&a, &b, SIZE).unwrap() - expected).abs() < 1e-6);
    }

    #[test]
    fn mismatched_sizes_are_an_error() {
        assert!(psnr(&[0.0; 3], &[0.0; 4], ImageSize { channels: 1, height: 1, width: 3 }).is_err());
    }

    /// SSIM by the paper's definition, one window position at a time: the Gaussian-weighted means, variances and
    /// covariance over the 11 x 11 window (weights exp(-(dx^2 + dy^2) / (2 sigma^2)), normalised), then
    /// ((2 mu_a mu_b + C1)(2 cov + C2)) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)), averaged over the positions
    /// where the window fits and over channels.
    fn ssim_by_definition(a: &[f32], b: &[f32], size: ImageSize) -> f64 {
        let (side, half) = (SSIM_WINDOW, SSIM_WINDOW / 2);
        let offsets = || (0..side).flat_map(move |dy| (0..side).map(move |dx| (dy, dx)));
        let weight = |dy: usize, dx: usize| {
            let (y, x) = (dy as f64 - half as f64, dx as f64 - half as f64);
            (-(x * x + y * y) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp()
        };
        let total: f64 = offsets().map(|(dy, dx)| weight(dy, dx)).sum();
        let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
        let plane = size.height * size.width;
        let mut channel_means = Vec::new();
        for channel in 0..size.channels {
            let at = |image: &[f32], y: usize, x: usize| f64::from(image[channel * plane + y * size.width + x]);
            let mut values = Vec::new();
            for (top, left) in (0..=size.height - side).flat_map(|y| (0..=size.width - side).map(move |x| (y, x))) {
                let moment = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
                    let sum: f64 = offsets()
                        .map(|(dy, dx)| weight(dy, dx) * f(at(a, top + dy, left + dx), at(b, top + dy, left + dx)))
                        .sum();
                    sum / total
                };
                let (mean_a, mean_b) = (moment(&|x, _| x), moment(&|_, y| y));
                let var_a = moment(&|x, _| x * x) - mean_a * mean_a;
                let var_b = moment(&|_, y| y * y) - mean_b * mean_b;
                let cov = moment(&|x, y| x * y) - mean_a * mean_b;
                values.push(
                    ((2.0 * mean_a * mean_b + c1) * (2.0 * cov + c2))
                        / ((mean_a * mean_a + mean_b * mean_b + c1) * (var_a + var_b + c2)),
                );
            }
            channel_means.push(values.iter().sum::<f64>() / values.len() as f64);
        }
        channel_means.iter().sum::<f64>() / channel_means.len() as f64
    }

    #[test]
    fn ssim_matches_the_definition_computed_window_by_window() {
        let size = ImageSize { channels: 3, height: 19, width: 14 };
        let smooth: Vec<f32> = (0..size.len())
            .map(|i| 0.5 + 0.4 * ((i % 14) as f32 * 0.3).sin() * ((i / 14) as f32 * 0.2).cos())
            .collect();
        let noisy: Vec<f32> = smooth
            .iter()
            .enumerate()
            .map(|(i, v)| (v + ((i * 7919) % 101) as f32 / 500.0 - 0.1).clamp(0.0, 1.0))
            .collect();
        for (a, b) in [(&smooth, &noisy), (&noisy, &smooth), (&smooth, &smooth.iter().map(|v| v * 0.7).collect())] {
            let (fast, reference) = (ssim(a, b, size).unwrap(), ssim_by_definition(a, b, size));
            assert!((fast - reference).abs() < 1e-9, "SSIM {fast} against the definition's {reference}");
            assert!(fast < 1.0 && fast > 0.0);
        }
    }
}
