"""The environment that caps PyTorch's CPU kernels at an instruction set, for the comparison scripts'
`--torch-isa`: ATen's own vectorised kernels (ATEN_CPU_CAPABILITY), oneDNN's convolutions and matrix multiplies
(ONEDNN_MAX_CPU_ISA) and MKL's (MKL_ENABLE_INSTRUCTIONS). With `--torch-isa avx2` beside elbo's ELBO_SIMD=avx2, both
programs run as they would on a CPU whose widest level is AVX2 (most AMD parts before Zen 4, Intel client CPUs);
`native` leaves PyTorch at the widest level it detects.
"""
import os

ISAS = ('native', 'avx2')


def torch_isa_env(isa, base=None):
    """A copy of `base` (default: this process's environment) with PyTorch capped at `isa`."""
    env = dict(os.environ if base is None else base)
    if isa == 'avx2':
        env.update(ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2', MKL_ENABLE_INSTRUCTIONS='AVX2')
    elif isa != 'native':
        raise ValueError(f'--torch-isa: expected one of {", ".join(ISAS)}, got {isa!r}')
    return env
