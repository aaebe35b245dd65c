/* The FMA throughput of one core at 256-bit (AVX2) and 512-bit (AVX-512) vectors: 12 independent
 * multiply-adds per iteration, enough to hide the FMA latency on the cores measured (BENCHMARKS.md).
 * Build and run: gcc -O3 -mavx512f -mfma -funroll-loops -o /tmp/fma_peak bench/fma_peak.c && taskset -c 1 /tmp/fma_peak
 * (on a CPU without AVX-512, drop -mavx512f and the second half). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ACCUMULATORS 12
#define ITERATIONS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    __m256 narrow[ACCUMULATORS];
    __m256 narrow_scale = _mm256_set1_ps(1.0000001f), narrow_shift = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < ACCUMULATORS; i++) narrow[i] = _mm256_set1_ps(i);
    double start = now();
    for (long n = 0; n < ITERATIONS; n++)
        for (int i = 0; i < ACCUMULATORS; i++) narrow[i] = _mm256_fmadd_ps(narrow[i], narrow_scale, narrow_shift);
    double seconds = now() - start;
    float keep = 0;
    for (int i = 0; i < ACCUMULATORS; i++) keep += narrow[i][0];
    printf("256-bit FMA: %.1f GFLOP/s per core (%g)\n", ITERATIONS * ACCUMULATORS * 16 / seconds / 1e9, keep);

    __m512 wide[ACCUMULATORS];
    __m512 wide_scale = _mm512_set1_ps(1.0000001f), wide_shift = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < ACCUMULATORS; i++) wide[i] = _mm512_set1_ps(i);
    start = now();
    for (long n = 0; n < ITERATIONS; n++)
        for (int i = 0; i < ACCUMULATORS; i++) wide[i] = _mm512_fmadd_ps(wide[i], wide_scale, wide_shift);
    seconds = now() - start;
    keep = 0;
    for (int i = 0; i < ACCUMULATORS; i++) keep += wide[i][0];
    printf("512-bit FMA: %.1f GFLOP/s per core (%g)\n", ITERATIONS * ACCUMULATORS * 32 / seconds / 1e9, keep);
    return 0;
}
