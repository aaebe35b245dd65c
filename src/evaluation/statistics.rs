//! Means with standard errors across examples, and per-example accumulation of log-mean-exp in f64.

/// A mean over examples with its standard error (sample standard deviation / sqrt(n)).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Figure {
    /// The mean.
    pub mean: f64,
    /// The standard error of the mean.
    pub standard_error: f64,
}

impl Figure {
    /// The mean and standard error of `values`.
    pub fn of(values: &[f64]) -> Figure {
        let n = values.len() as f64;
        if values.is_empty() {
            return Figure::default();
        }
        let mean = values.iter().sum::<f64>() / n;
        let variance =
            if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Figure { mean, standard_error: (variance / n).sqrt() }
    }
}

/// Streaming log-sum-exp of one example's log-weights, in f64, over chunks of samples.
#[derive(Debug, Clone, Copy)]
pub struct LogSumExp {
    max: f64,
    scaled_sum: f64,
    count: usize,
}

impl Default for LogSumExp {
    fn default() -> Self {
        LogSumExp { max: f64::NEG_INFINITY, scaled_sum: 0.0, count: 0 }
    }
}

impl LogSumExp {
    /// Adds values.
    pub fn extend(&mut self, values: impl IntoIterator<Item = f64>) {
        for value in values {
            if value > self.max {
                self.scaled_sum = self.scaled_sum * (self.max - value).exp() + 1.0;
                self.max = value;
            } else {
                self.scaled_sum += (value - self.max).exp();
            }
            self.count += 1;
        }
    }

    /// log (1/n) sum exp(values).
    pub fn log_mean_exp(&self) -> f64 {
        self.max + self.scaled_sum.ln() - (self.count as f64).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_mean_exp_streams_without_overflow() {
        let mut acc = LogSumExp::default();
        acc.extend([1000.0, 1000.0 + 2f64.ln()]);
        acc.extend([1000.0 - 1e9]);
        let expected = 1000.0 + (3.0f64 / 3.0).ln();
        assert!((acc.log_mean_exp() - expected).abs() < 1e-12, "{}", acc.log_mean_exp());
    }

    #[test]
    fn standard_error_of_known_values() {
        let f = Figure::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f.mean, 2.5);
        assert!((f.standard_error - (5.0f64 / 3.0 / 4.0).sqrt()).abs() < 1e-12);
    }
}
