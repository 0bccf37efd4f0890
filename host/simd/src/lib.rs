//! Vectorized reductions for wasmpipe's kernels (dot, sum, squared
//! deviations, the Gram matrix of least squares), with runtime CPU-feature
//! dispatch: AVX-512 or AVX2+FMA on x86-64 where the CPU has them, NEON on
//! aarch64 (always present there), and a portable version elsewhere (eight
//! independent accumulators, which the compiler maps onto whatever vector
//! unit the baseline target has). Every path sums in a different order from
//! a scalar loop, so results agree with it to rounding, not bit for bit;
//! the tests bound the difference.
//!
//! ```
//! assert_eq!(wasmpipe_simd::dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
//! ```

/// Sum of `a[i] * b[i]`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        return unsafe { dot_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    #[cfg(target_arch = "aarch64")]
    return dot_neon(a, b);
    #[allow(unreachable_code, reason = "the aarch64 path returns above")]
    dot_portable(a, b)
}

/// The NEON path: four 2-lane fused multiply-add accumulators.
#[cfg(target_arch = "aarch64")]
pub fn dot_neon(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::aarch64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // SAFETY: NEON is part of the aarch64 baseline; every load below reads
    // two f64 at an offset below n - 1.
    unsafe {
        let mut acc = [vdupq_n_f64(0.0); 4];
        let mut i = 0;
        while i + 8 <= n {
            for (lane, acc) in acc.iter_mut().enumerate() {
                let off = i + lane * 2;
                *acc = vfmaq_f64(*acc, vld1q_f64(pa.add(off)), vld1q_f64(pb.add(off)));
            }
            i += 8;
        }
        let sum = vaddq_f64(vaddq_f64(acc[0], acc[1]), vaddq_f64(acc[2], acc[3]));
        let mut total = vaddvq_f64(sum);
        while i < n {
            total = a[i].mul_add(b[i], total);
            i += 1;
        }
        total
    }
}

/// Sum of `a[i]`.
pub fn sum(a: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = a.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Sum of squared deviations from `mean`, with the minimum and maximum.
/// Two tight loops of eight independent lanes each: both vectorize, where
/// one fused loop does not.
pub fn deviations(a: &[f64], mean: f64) -> (f64, f64, f64) {
    let (mut m2, mut lo, mut hi) = ([0.0f64; 8], [f64::INFINITY; 8], [f64::NEG_INFINITY; 8]);
    let chunks = a.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks.clone() {
        for i in 0..8 {
            let d = c[i] - mean;
            m2[i] += d * d;
        }
    }
    for c in chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let mut total = m2.iter().sum::<f64>();
    let mut min = lo.iter().copied().fold(f64::INFINITY, f64::min);
    let mut max = hi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for &v in tail {
        total += (v - mean) * (v - mean);
        min = min.min(v);
        max = max.max(v);
    }
    (total, min, max)
}

/// The portable path: eight independent lanes.
pub fn dot_portable(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The AVX2 path: four 4-lane fused multiply-add accumulators.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (lane, acc) in acc.iter_mut().enumerate() {
            let off = i + lane * 4;
            // SAFETY: off + 4 <= i + 16 <= n, within both slices.
            let (x, y) = unsafe { (_mm256_loadu_pd(pa.add(off)), _mm256_loadu_pd(pb.add(off))) };
            *acc = _mm256_fmadd_pd(x, y, *acc);
        }
        i += 16;
    }
    let sum4 = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let mut lanes = [0.0f64; 4];
    // SAFETY: `lanes` holds four f64.
    unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), sum4) };
    let mut total = lanes.iter().sum::<f64>();
    while i < n {
        total = a[i].mul_add(b[i], total);
        i += 1;
    }
    total
}

/// The AVX-512 path: four 8-lane fused multiply-add accumulators.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_avx512(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_pd(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (lane, acc) in acc.iter_mut().enumerate() {
            let off = i + lane * 8;
            // SAFETY: off + 8 <= i + 32 <= n, within both slices.
            let (x, y) = unsafe { (_mm512_loadu_pd(pa.add(off)), _mm512_loadu_pd(pb.add(off))) };
            *acc = _mm512_fmadd_pd(x, y, *acc);
        }
        i += 32;
    }
    let mut total = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3])));
    while i < n {
        total = a[i].mul_add(b[i], total);
        i += 1;
    }
    total
}

/// Four dot products sharing one operand: `[a.b0, a.b1, a.b2, a.b3]`,
/// reading `a` once (the inner tile of `gram`).
pub fn dot4(a: &[f64], b: [&[f64]; 4]) -> [f64; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot4_avx2(a, b) };
    }
    [dot_portable(a, b[0]), dot_portable(a, b[1]), dot_portable(a, b[2]), dot_portable(a, b[3])]
}

/// AVX2 tile: per 8 rows, two loads of `a` feed eight fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot4_avx2(a: &[f64], b: [&[f64]; 4]) -> [f64; 4] {
    use std::arch::x86_64::*;
    let n = b.iter().fold(a.len(), |n, x| n.min(x.len()));
    let mut acc = [[_mm256_setzero_pd(); 2]; 4];
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within every slice.
        unsafe {
            let x0 = _mm256_loadu_pd(a.as_ptr().add(i));
            let x1 = _mm256_loadu_pd(a.as_ptr().add(i + 4));
            for (j, bj) in b.iter().enumerate() {
                acc[j][0] = _mm256_fmadd_pd(x0, _mm256_loadu_pd(bj.as_ptr().add(i)), acc[j][0]);
                acc[j][1] = _mm256_fmadd_pd(x1, _mm256_loadu_pd(bj.as_ptr().add(i + 4)), acc[j][1]);
            }
        }
        i += 8;
    }
    let mut out = [0.0f64; 4];
    for (j, o) in out.iter_mut().enumerate() {
        let mut lanes = [0.0f64; 4];
        // SAFETY: `lanes` holds four f64.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(acc[j][0], acc[j][1])) };
        *o = lanes.iter().sum::<f64>();
        for k in i..n {
            *o = a[k].mul_add(b[j][k], *o);
        }
    }
    out
}

/// Rows per block in `gram`: ten f64 columns of a block stay in L2.
const BLOCK: usize = 2048;

/// Upper triangle of X^T X (row-major k x k, mirrored at the end) and
/// X^T y, for columns `x` (all of `y`'s length), with an optional leading
/// column of ones. Blocked by rows, so every column block is read from
/// cache for all its products.
pub fn gram(x: &[&[f64]], y: &[f64], intercept: bool) -> (Vec<f64>, Vec<f64>) {
    let off = usize::from(intercept);
    let k = x.len() + off;
    let mut xtx = vec![0.0; k * k];
    let mut xty = vec![0.0; k];
    let n = y.len();
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let yb = &y[start..end];
        if intercept {
            xtx[0] += (end - start) as f64;
            xty[0] += sum(yb);
            for (j, col) in x.iter().enumerate() {
                xtx[j + 1] += sum(&col[start..end]);
            }
        }
        for (a, ca) in x.iter().enumerate() {
            let ca = &ca[start..end];
            xty[a + off] += dot(ca, yb);
            // Tiles of four partners share each load of column `a`.
            let mut b = a;
            while b + 4 <= x.len() {
                let tile =
                    dot4(ca, [&x[b][start..end], &x[b + 1][start..end], &x[b + 2][start..end], &x[b + 3][start..end]]);
                for (t, v) in tile.iter().enumerate() {
                    xtx[(a + off) * k + b + t + off] += v;
                }
                b += 4;
            }
            for (b, cb) in x.iter().enumerate().skip(b) {
                xtx[(a + off) * k + b + off] += dot(ca, &cb[start..end]);
            }
        }
        start = end;
    }
    for a in 0..k {
        for b in 0..a {
            xtx[a * k + b] = xtx[b * k + a];
        }
    }
    (xtx, xty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 200.0 - 100.0
            })
            .collect()
    }

    fn scalar_dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Every path agrees with a scalar loop within a bound proportional to
    /// the sum of magnitudes (the usual error bound for reordered sums).
    fn close(got: f64, want: f64, magnitude: f64) -> bool {
        (got - want).abs() <= 1e-13 * magnitude.max(1.0)
    }

    #[test]
    fn every_dot_path_matches_the_scalar_reference() {
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 1000, 4099] {
            let (a, b) = (data(n, 1), data(n, 2));
            let want = scalar_dot(&a, &b);
            let magnitude: f64 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            assert!(close(dot_portable(&a, &b), want, magnitude), "portable, n = {n}");
            assert!(close(dot(&a, &b), want, magnitude), "dispatched, n = {n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: checked just above.
                assert!(close(unsafe { dot_avx2(&a, &b) }, want, magnitude), "avx2, n = {n}");
                // SAFETY: as above.
                let four = unsafe { dot4_avx2(&a, [&b, &b, &a, &a]) };
                assert!(close(four[0], want, magnitude) && close(four[1], want, magnitude), "dot4 avx2, n = {n}");
            }
            #[cfg(target_arch = "aarch64")]
            assert!(close(dot_neon(&a, &b), want, magnitude), "neon, n = {n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                assert!(close(unsafe { dot_avx512(&a, &b) }, want, magnitude), "avx512, n = {n}");
            }
            let (c, d, e) = (data(n, 3), data(n, 4), data(n, 5));
            let four = dot4(&a, [&b, &c, &d, &e]);
            for (got, other) in four.iter().zip([&b, &c, &d, &e]) {
                let want = scalar_dot(&a, other);
                let mag: f64 = a.iter().zip(other.iter()).map(|(x, y)| (x * y).abs()).sum();
                assert!(close(*got, want, mag), "dot4, n = {n}");
            }
            let sum_want: f64 = a.iter().sum();
            assert!(close(sum(&a), sum_want, a.iter().map(|v| v.abs()).sum()), "sum, n = {n}");
        }
    }

    #[test]
    fn gram_matches_the_definition() {
        let n = 5000;
        let cols: Vec<Vec<f64>> = (0..3).map(|c| data(n, 10 + c)).collect();
        let y = data(n, 99);
        let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        let (xtx, xty) = gram(&refs, &y, true);
        let row = |i: usize| [1.0, cols[0][i], cols[1][i], cols[2][i]];
        for a in 0..4 {
            let want_y: f64 = (0..n).map(|i| row(i)[a] * y[i]).sum();
            assert!(close(xty[a], want_y, 1e4 * n as f64));
            for b in 0..4 {
                let want: f64 = (0..n).map(|i| row(i)[a] * row(i)[b]).sum();
                assert!(close(xtx[a * 4 + b], want, 1e4 * n as f64), "xtx[{a}][{b}]");
            }
        }
    }
}
