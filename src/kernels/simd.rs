//! The SIMD level the CPU kernels run at: AVX-512 (16 float lanes), AVX2 with FMA (8) or the build's baseline
//! (SSE2's 4 on x86-64), picked once at run time from what the CPU has. The environment variable `ELBO_SIMD`
//! (`avx512`, `avx2` or `scalar`) forces a narrower level, so both paths of a CPU that has both can be measured
//! on one machine. It governs elbo's own kernels and the matrix multiplies of [`mod@super::matmul`]; candle's own ops
//! (the graph path's) pick their level themselves.
//!
//! elbo's elementwise kernels give the same bits at every level: Rust never contracts a * b + c into a fused
//! multiply-add by itself, and every reduction keeps a fixed number of accumulator lanes, so only the vector width
//! changes. The matrix multiplies differ in their last bits between levels (their microkernels use FMA and block
//! differently); the tests hold each level to the scalar reference.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable that forces a SIMD level.
pub const SIMD_VARIABLE: &str = "ELBO_SIMD";

/// A SIMD level, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SimdLevel {
    /// The build's baseline (SSE2 on x86-64), no run-time features.
    Scalar,
    /// AVX2 with FMA: 8 float lanes.
    Avx2,
    /// AVX-512 (F, BW, DQ, VL): 16 float lanes.
    Avx512,
}

impl SimdLevel {
    /// Every level, narrowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The name `ELBO_SIMD` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The widest level this CPU has (checked once, then cached by the standard library).
    pub fn detected() -> SimdLevel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("fma") {
                return SimdLevel::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return SimdLevel::Avx2;
            }
        }
        SimdLevel::Scalar
    }

    /// The level `ELBO_SIMD` asks for (the detected one when it is unset or empty); an error for a name that is
    /// not a level, or a level this CPU lacks.
    pub fn requested() -> Result<SimdLevel> {
        let detected = SimdLevel::detected();
        let value = std::env::var(SIMD_VARIABLE).unwrap_or_default();
        if value.is_empty() {
            return Ok(detected);
        }
        let level = SimdLevel::ALL.into_iter().find(|level| level.name() == value.to_ascii_lowercase());
        match level {
            Some(level) if level <= detected => Ok(level),
            Some(level) => Err(Error::invalid_setting(
                SIMD_VARIABLE,
                format!("{} needs a CPU with it; this one's widest level is {}", level.name(), detected.name()),
            )),
            None => {
                Err(Error::invalid_setting(SIMD_VARIABLE, format!("expected avx512, avx2 or scalar, got {value:?}")))
            }
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

thread_local! {
    /// A level forced on this thread by `with_simd_level`.
    static FORCED: Cell<Option<SimdLevel>> = const { Cell::new(None) };
}

/// The level the kernels run at: `with_simd_level`'s on this thread, else `ELBO_SIMD`'s, else the widest the CPU
/// has. (The command line refuses a bad `ELBO_SIMD` before any kernel runs; a library caller who set one gets the
/// detected level.)
#[inline]
pub fn simd_level() -> SimdLevel {
    static PROCESS: OnceLock<SimdLevel> = OnceLock::new();
    FORCED
        .with(Cell::get)
        .unwrap_or_else(|| *PROCESS.get_or_init(|| SimdLevel::requested().unwrap_or_else(|_| SimdLevel::detected())))
}

/// Whether the CPU is an Intel one (CPUID's vendor string "GenuineIntel"), for the few choices whose better side was
/// measured to differ between Intel and AMD CPUs at the same SIMD level; checked once.
pub fn made_by_intel() -> bool {
    static INTEL: OnceLock<bool> = OnceLock::new();
    *INTEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: CPUID's leaf 0 exists on every x86-64 CPU (toolchains before the intrinsic became safe
            // declare it unsafe; later ones find the block unneeded)
            #[allow(unused_unsafe)]
            let vendor = unsafe { std::arch::x86_64::__cpuid(0) };
            // the 12 bytes of the vendor string lie in ebx, edx, ecx, in that order
            let bytes: Vec<u8> =
                [vendor.ebx, vendor.edx, vendor.ecx].iter().flat_map(|word| word.to_le_bytes()).collect();
            bytes == b"GenuineIntel"
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Runs `work` with the kernels it calls on this thread at `level`, capped at what the CPU has (for the tests,
/// which hold every level to the scalar one; kernels that spread over rayon's threads run there at the process's
/// level).
#[cfg(test)]
pub fn with_simd_level<R>(level: SimdLevel, work: impl FnOnce() -> R) -> R {
    let before = FORCED.with(|forced| forced.replace(Some(level.min(SimdLevel::detected()))));
    let result = work();
    FORCED.with(|forced| forced.set(before));
    result
}

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 + FMA and as built, the one for
/// [`simd_level`] picked at each call.
///
/// Code inlined into the body compiles at each level; a closure made in the body (or in an inlined helper) is one
/// function shared by the three copies, and where it is too large to be inlined into them it compiles as built,
/// without their target features: a hot loop belongs in the body, or in `#[inline(always)]` functions, not in a
/// closure handed to another function (the conv phases' rows ran in SSE registers that way, `conv::phases`).
macro_rules! wide_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled with AVX-512. Safety: only called where the CPU has it.
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                /// The body compiled with AVX2 and FMA. Safety: only called where the CPU has them.
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::kernels::simd_level() {
                    // SAFETY: simd_level never exceeds what the CPU has.
                    $crate::kernels::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::SimdLevel::Scalar => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_fn;

wide_fn! {
    /// total += part, value by value.
    pub fn add_to(total: &mut [f32], part: &[f32]) {
        total.iter_mut().zip(part).for_each(|(total, &value)| *total += value);
    }
}

wide_fn! {
    /// values = bytes / 255, value by value: bytes as values in [0, 1] (division is correctly rounded at every
    /// width, so every level gives the scalar code's bits).
    fn unit_values_into(values: &mut [f32], bytes: &[u8]) {
        values.iter_mut().zip(bytes).for_each(|(value, &byte)| *value = f32::from(byte) / 255.0);
    }
}

/// `bytes` divided by 255 appended to `out`: a batch's u8 pixels as values in [0, 1]. Measured on a 2-core Intel
/// Xeon (BENCHMARKS.md, the twenty-first session), row 1 of the benchmark matrix: the scalar conversion 1.7% of the
/// samples, this 1.06%, most of it waiting on the bytes' loads (which `data::Batcher` now prefetches).
pub fn extend_with_unit_values(out: &mut Vec<f32>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len(), 0.0);
    unit_values_into(&mut out[start..], bytes);
}

/// Asks the CPU to start loading `values` into its L2 cache, a 64-byte line at a time: a hint, which changes no
/// result and never faults (on CPUs other than x86-64 it does nothing).
pub fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(values)).step_by(64) {
            // SAFETY: SSE, which the intrinsic needs, is part of every x86-64 CPU; a prefetch reads nothing the
            // program sees and never faults, so the address only has to point where `values` lies
            unsafe { _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(offset)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID's vendor agrees with the kernel's account of the CPU, where there is one to read.
    #[test]
    fn the_vendor_is_the_one_linux_reports() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let Some(vendor) = cpuinfo.lines().find_map(|line| line.strip_prefix("vendor_id")) else { return };
        assert_eq!(made_by_intel(), vendor.trim_start_matches([' ', '\t', ':']) == "GenuineIntel", "{vendor}");
    }

    #[test]
    fn bytes_become_their_value_over_255_at_every_level() {
        let bytes: Vec<u8> = (0..=255).chain(0..45).collect();
        for level in SimdLevel::ALL {
            let mut out = vec![-1.0];
            with_simd_level(level, || extend_with_unit_values(&mut out, &bytes));
            let expected = std::iter::once(-1.0).chain(bytes.iter().map(|&byte| f32::from(byte) / 255.0));
            assert!(out.iter().copied().eq(expected), "{level:?}");
        }
    }

    #[test]
    fn a_forced_level_is_capped_at_the_cpus_and_restored_afterwards() {
        let outside = simd_level();
        for level in SimdLevel::ALL {
            let inside = with_simd_level(level, simd_level);
            assert_eq!(inside, level.min(SimdLevel::detected()));
        }
        assert_eq!(simd_level(), outside);
    }

    #[test]
    fn every_level_adds_the_same_bits() {
        let part: Vec<f32> = (0..1037).map(|i| (i as f32 * 0.37).sin()).collect();
        let sums: Vec<Vec<f32>> = SimdLevel::ALL
            .iter()
            .map(|&level| {
                let mut total: Vec<f32> = (0..1037).map(|i| i as f32 / 7.0).collect();
                with_simd_level(level, || add_to(&mut total, &part));
                total
            })
            .collect();
        assert!(sums.windows(2).all(|pair| pair[0] == pair[1]));
    }
}
