use elbo::kernels::{matmul, Destination, Operand, gemm_parallelism};
use std::time::Instant;
fn main() {
    elbo::runtime::configure_cpu_threads(std::env::var("T").map(|t| t.parse().unwrap()).unwrap_or(2));
    for &(m, k, n, tl, tr, name) in &[(128usize, 784usize, 400usize, false, true, "enc fwd x W^T"), (640, 400, 784, false, true, "dec out fwd"), (784, 640, 400, true, false, "dec out dW"), (640, 784, 400, false, false, "dec out dX"), (400, 128, 784, true, false, "enc dW"), (128, 400, 784, false, true, "dec out fwd b128"), (128,400,12544,false,true,"cat fwd"), (12544,128,400,true,false,"cat dW"), (128,12544,400,false,false,"cat dX")] {
        let a: Vec<f32> = (0..m*k).map(|i| (i % 17) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k*n).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut c = vec![0f32; m*n];
        let lhs = if tl { Operand::transposed(&a, m) } else { Operand::rows(&a, k) };
        let rhs = if tr { Operand::transposed(&b, k) } else { Operand::rows(&b, n) };
        for _ in 0..5 { matmul(&mut c, lhs, rhs, (m,k,n), Destination::Overwrite, gemm_parallelism(m*n*k)); }
        let reps = 50; let t = Instant::now();
        for _ in 0..reps { matmul(&mut c, lhs, rhs, (m,k,n), Destination::Overwrite, gemm_parallelism(m*n*k)); }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name:20} {m}x{k}x{n}: {:.3} ms, {:.0} GFLOP/s", s*1e3, 2.0*(m*k*n) as f64/s/1e9);
    }
}
