//! Where and how wide the computation runs: the `--device` and `--threads` flags every computing command shares.

use std::fmt;

use clap::Args;

/// The compute flags.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Device: cpu, cuda or cuda:N (cuda needs the `cuda` build feature).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceName,
    /// Compute threads (0 = all cores). Results repeat bit for bit for the same seed and thread count.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ComputeArgs {
    /// Sets the thread count (before any parallel work) and opens the device; returns both.
    pub fn apply(&self) -> anyhow::Result<(usize, candle_core::Device)> {
        let threads = super::set_threads(self.threads)?;
        Ok((threads, self.device.open()?))
    }
}

/// A device as named on the command line and in `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
}

impl DeviceName {
    /// The candle device (an error when the build has no CUDA or the GPU is missing).
    pub fn open(self) -> anyhow::Result<candle_core::Device> {
        Ok(match self {
            DeviceName::Cpu => candle_core::Device::Cpu,
            DeviceName::Cuda(ordinal) => candle_core::Device::new_cuda(ordinal)?,
        })
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu => write!(f, "cpu"),
            DeviceName::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<DeviceName, String> {
    let expected = || format!("unknown device `{text}`: expected `cpu`, `cuda` or `cuda:N`");
    match text {
        "cpu" => Ok(DeviceName::Cpu),
        "cuda" => Ok(DeviceName::Cuda(0)),
        _ => text.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceName::Cuda).ok_or_else(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [("cpu", DeviceName::Cpu), ("cuda", DeviceName::Cuda(0)), ("cuda:3", DeviceName::Cuda(3))]
        {
            assert_eq!(parse_device(text), Ok(device));
        }
        assert_eq!(DeviceName::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(parse_device(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
