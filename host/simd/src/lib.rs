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

mod cholesky;
mod logistic;

pub use cholesky::solve_spd;

pub use logistic::{NewtonTerms, logistic_newton, logistic_scratch_bytes, pack_upper};

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

/// The sixteen dot products of four columns `a` with four columns `b`:
/// `out[i][j] = a[i].b[j]` (the register tile of `gram`). Each load feeds
/// four fused multiply-adds, where a lone dot product feeds one per two.
pub fn dot4x4(a: [&[f64]; 4], b: [&[f64]; 4]) -> [[f64; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports the feature the function is compiled for.
        return unsafe { dot4x4_avx512(a, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { dot4x4_avx2(a, b) };
    }
    dot4x4_portable(a, b)
}

/// The portable tile: sixteen dot products.
pub fn dot4x4_portable(a: [&[f64]; 4], b: [&[f64]; 4]) -> [[f64; 4]; 4] {
    a.map(|a| b.map(|b| dot_portable(a, b)))
}

/// The shortest length among a tile's columns.
fn tile_len(a: &[&[f64]; 4], b: &[&[f64]; 4]) -> usize {
    a.iter().chain(b).map(|c| c.len()).min().unwrap_or(0)
}

/// The remainder rows (`from..n`) of a tile, added to `out` in scalar.
fn tile_tail(a: [&[f64]; 4], b: [&[f64]; 4], from: usize, n: usize, out: &mut [[f64; 4]; 4]) {
    for (i, ai) in a.iter().enumerate() {
        for (j, bj) in b.iter().enumerate() {
            for k in from..n {
                out[i][j] = ai[k].mul_add(bj[k], out[i][j]);
            }
        }
    }
}

/// AVX2 tile, as two halves of 2 x 4 (eight accumulators and six loads
/// fit the sixteen registers; a full 4 x 4 would spill).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot4x4_avx2(a: [&[f64]; 4], b: [&[f64]; 4]) -> [[f64; 4]; 4] {
    use std::arch::x86_64::*;
    let n = tile_len(&a, &b);
    let mut out = [[0.0; 4]; 4];
    let mut i = 0;
    for half in 0..2 {
        let (a0, a1) = (a[2 * half].as_ptr(), a[2 * half + 1].as_ptr());
        let mut acc = [[_mm256_setzero_pd(); 4]; 2];
        i = 0;
        while i + 4 <= n {
            // SAFETY: i + 4 <= n, within every slice.
            unsafe {
                let x = [_mm256_loadu_pd(a0.add(i)), _mm256_loadu_pd(a1.add(i))];
                for (j, bj) in b.iter().enumerate() {
                    let y = _mm256_loadu_pd(bj.as_ptr().add(i));
                    acc[0][j] = _mm256_fmadd_pd(x[0], y, acc[0][j]);
                    acc[1][j] = _mm256_fmadd_pd(x[1], y, acc[1][j]);
                }
            }
            i += 4;
        }
        for (r, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let mut lanes = [0.0f64; 4];
                // SAFETY: `lanes` holds four f64.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), *v) };
                out[2 * half + r][j] = lanes.iter().sum();
            }
        }
    }
    tile_tail(a, b, i, n, &mut out);
    out
}

/// AVX-512 tile: sixteen 8-lane accumulators and eight loads per eight
/// rows fit the thirty-two registers.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn dot4x4_avx512(a: [&[f64]; 4], b: [&[f64]; 4]) -> [[f64; 4]; 4] {
    use std::arch::x86_64::*;
    let n = tile_len(&a, &b);
    let mut acc = [[_mm512_setzero_pd(); 4]; 4];
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within every slice.
        unsafe {
            let x = a.map(|c| _mm512_loadu_pd(c.as_ptr().add(i)));
            for (j, bj) in b.iter().enumerate() {
                let y = _mm512_loadu_pd(bj.as_ptr().add(i));
                for (r, xr) in x.iter().enumerate() {
                    acc[r][j] = _mm512_fmadd_pd(*xr, y, acc[r][j]);
                }
            }
        }
        i += 8;
    }
    let mut out = acc.map(|row| row.map(|v| _mm512_reduce_add_pd(v)));
    tile_tail(a, b, i, n, &mut out);
    out
}

/// Rows per block in `gram`: a block of a dozen columns stays in L2
/// while every tile of the triangle reads it.
const BLOCK: usize = 1024;

/// Rows per parallel chunk in `gram`. The chunks are fixed by the row
/// count, never by the number of threads, so the result is the same
/// bits at any parallelism.
pub const GRAM_CHUNK: usize = 1 << 16;
const CHUNK: usize = GRAM_CHUNK;

/// Bytes of scratch space `gram` takes for `columns` columns (the target
/// included) of `rows` rows: one m x m partial matrix per chunk, and the
/// sum.
pub fn gram_scratch_bytes(columns: usize, rows: usize) -> usize {
    let m = columns.saturating_add(1);
    m.saturating_mul(m).saturating_mul(8).saturating_mul(rows.div_ceil(CHUNK).saturating_add(1))
}

/// Upper triangle of X^T X (row-major k x k, mirrored at the end) and
/// X^T y, for columns `x` (all of `y`'s length), with an optional leading
/// column of ones. The columns and `y` are treated as one matrix whose
/// Gram matrix is computed in 4 x 4 register tiles over blocks of rows
/// held in cache; inputs over one chunk fan out on rayon.
pub fn gram(x: &[&[f64]], y: &[f64], intercept: bool) -> (Vec<f64>, Vec<f64>) {
    gram_until(x, y, intercept, &|| false).expect("never stopped")
}

/// [`gram`], giving up (`None`) as soon as `stop` says so; it is asked
/// once per block of rows, so a caller with a deadline is answered within
/// one block's work.
pub fn gram_until(
    x: &[&[f64]],
    y: &[f64],
    intercept: bool,
    stop: &(dyn Fn() -> bool + Sync),
) -> Option<(Vec<f64>, Vec<f64>)> {
    use rayon::prelude::*;
    let n = y.len();
    let mut cols: Vec<&[f64]> = x.iter().map(|c| &c[..n]).collect();
    cols.push(y);
    let m = cols.len();
    let parts: Vec<(Vec<f64>, Vec<f64>)> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let rows = c * CHUNK..((c + 1) * CHUNK).min(n);
            let chunk: Vec<&[f64]> = cols.iter().map(|col| &col[rows.clone()]).collect();
            let sums = chunk.iter().map(|col| sum(col)).collect();
            Some((gram_upper(&chunk, stop)?, sums))
        })
        .collect::<Option<_>>()?;
    let mut full = vec![0.0; m * m];
    let mut sums = vec![0.0; m];
    for (g, s) in parts {
        full.iter_mut().zip(g).for_each(|(t, v)| *t += v);
        sums.iter_mut().zip(s).for_each(|(t, v)| *t += v);
    }
    // Lay out [1, x..] x [1, x..] and [1, x..] . y from the pieces.
    let off = usize::from(intercept);
    let k = x.len() + off;
    let mut xtx = vec![0.0; k * k];
    let mut xty = vec![0.0; k];
    if intercept {
        xtx[0] = n as f64;
        xty[0] = sums[m - 1];
        xtx[1..=x.len()].copy_from_slice(&sums[..x.len()]);
    }
    for a in 0..x.len() {
        xty[a + off] = full[a * m + m - 1];
        for b in a..x.len() {
            xtx[(a + off) * k + b + off] = full[a * m + b];
        }
    }
    for a in 0..k {
        for b in 0..a {
            xtx[a * k + b] = xtx[b * k + a];
        }
    }
    Some((xtx, xty))
}

/// The upper triangle (with the diagonal) of the Gram matrix of `cols`,
/// all of one length, row-major m x m; the lower triangle is left zero.
fn gram_upper(cols: &[&[f64]], stop: &(dyn Fn() -> bool + Sync)) -> Option<Vec<f64>> {
    let m = cols.len();
    let n = cols.first().map_or(0, |c| c.len());
    let mut out = vec![0.0; m * m];
    let quads = m.div_ceil(4);
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        // Column `i` of the block, with indices past the end repeating the
        // last column (their products are computed and dropped).
        let col = |i: usize| &cols[i.min(m - 1)][start..end];
        for qa in 0..quads {
            // A row of tiles is m / 4 tiles of one block: with thousands of
            // columns, asking per block would answer too late.
            if stop() {
                return None;
            }
            for qb in qa..quads {
                let tile = dot4x4(std::array::from_fn(|t| col(4 * qa + t)), std::array::from_fn(|t| col(4 * qb + t)));
                for (t, row) in tile.iter().enumerate() {
                    for (u, v) in row.iter().enumerate() {
                        let (a, b) = (4 * qa + t, 4 * qb + u);
                        if a <= b && b < m {
                            out[a * m + b] += v;
                        }
                    }
                }
            }
        }
        start = end;
    }
    Some(out)
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
            }
            #[cfg(target_arch = "aarch64")]
            assert!(close(dot_neon(&a, &b), want, magnitude), "neon, n = {n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                assert!(close(unsafe { dot_avx512(&a, &b) }, want, magnitude), "avx512, n = {n}");
            }
            let (c, d, e) = (data(n, 3), data(n, 4), data(n, 5));
            let tile_a = [a.as_slice(), &b, &c, &d];
            let tile_b = [e.as_slice(), &a, &c, &b];
            let mut paths = vec![("portable", dot4x4_portable(tile_a, tile_b)), ("dispatched", dot4x4(tile_a, tile_b))];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: checked just above.
                paths.push(("avx2", unsafe { dot4x4_avx2(tile_a, tile_b) }));
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                paths.push(("avx512", unsafe { dot4x4_avx512(tile_a, tile_b) }));
            }
            for (path, tile) in paths {
                for (i, x) in tile_a.iter().enumerate() {
                    for (j, y) in tile_b.iter().enumerate() {
                        let mag: f64 = x.iter().zip(y.iter()).map(|(p, q)| (p * q).abs()).sum();
                        assert!(close(tile[i][j], scalar_dot(x, y), mag), "dot4x4 {path} [{i}][{j}], n = {n}");
                    }
                }
            }
            let sum_want: f64 = a.iter().sum();
            assert!(close(sum(&a), sum_want, a.iter().map(|v| v.abs()).sum()), "sum, n = {n}");
        }
    }

    #[test]
    fn gram_matches_the_definition() {
        // Column counts around the 4-wide tile, lengths around the SIMD
        // width, the block and the parallel chunk.
        for (width, n) in [(0, 10), (1, 0), (1, 7), (3, 5000), (4, 1025), (5, 70_001), (9, 333), (12, 2049)] {
            let cols: Vec<Vec<f64>> = (0..width).map(|c| data(n, 10 + c as u64)).collect();
            let y = data(n, 99);
            let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
            for intercept in [true, false] {
                let (xtx, xty) = gram(&refs, &y, intercept);
                let off = usize::from(intercept);
                let k = width + off;
                let row = |i: usize, a: usize| if a < off { 1.0 } else { cols[a - off][i] };
                for a in 0..k {
                    let want_y: f64 = (0..n).map(|i| row(i, a) * y[i]).sum();
                    assert!(close(xty[a], want_y, 1e4 * n as f64), "xty[{a}], {width} x {n}");
                    for b in 0..k {
                        let want: f64 = (0..n).map(|i| row(i, a) * row(i, b)).sum();
                        assert!(close(xtx[a * k + b], want, 1e4 * n as f64), "xtx[{a}][{b}], {width} x {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn gram_gives_the_same_bits_at_any_parallelism() {
        let n = 300_000;
        let cols: Vec<Vec<f64>> = (0..6).map(|c| data(n, 40 + c)).collect();
        let y = data(n, 7);
        let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| gram(&refs, &y, true))
        };
        let one = on(1);
        for threads in [2, 3, 8] {
            assert_eq!(on(threads), one, "{threads} threads");
        }
    }
}
