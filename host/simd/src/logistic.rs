//! One fused pass for a Newton step of logistic regression: the loss, the
//! gradient and the Hessian of the negative log-likelihood over a batch,
//! binary (sigmoid) or multinomial (softmax).
//!
//! Done with elementwise kernels, each of these is a dozen passes over the
//! rows, each allocating a column: margins, exponentials, probabilities,
//! residuals, weights, their square roots, the scaled columns. Here the
//! rows go through in blocks that stay in cache, with a handful of
//! block-sized buffers reused from block to block: memory traffic is one
//! read of the columns.

use crate::{dot, gram_upper, sum};

/// Rows per block: the block's columns and buffers stay in the L2 cache.
const BLOCK: usize = 1024;

/// What [`logistic_newton`] sums over the usable rows.
#[derive(Debug, Clone, PartialEq)]
pub struct NewtonTerms {
    /// Rows used: every feature finite, the target present and not NaN.
    pub rows: u64,
    /// The negative log-likelihood.
    pub loss: f64,
    /// Its gradient, `m` blocks of `p` (`p` = features + 1, the intercept
    /// first; `m` = 1 for two classes, else the number of classes).
    pub gradient: Vec<f64>,
    /// Its Hessian, `(m p) x (m p)` and symmetric: the upper triangle,
    /// row by row (`(m p) (m p + 1) / 2` values).
    pub hessian: Vec<f64>,
}

/// Bytes of scratch [`logistic_newton`] takes at most for `features`
/// features and `modeled` weight rows: the full Hessian and its packed copy
/// (alive together at the end), a block's Gram matrix, the gradient and the
/// block buffers.
pub fn logistic_scratch_bytes(features: usize, modeled: usize) -> usize {
    let p = features.saturating_add(1);
    let n = modeled.saturating_mul(p);
    let full = n.saturating_mul(n);
    let packed = n.saturating_mul(n.saturating_add(1)) / 2;
    let block = features.saturating_add(p).saturating_add(modeled.saturating_mul(4)).saturating_add(3);
    full.saturating_add(packed)
        .saturating_add(p.saturating_mul(p))
        .saturating_add(n)
        .saturating_add(block.saturating_mul(BLOCK))
        .saturating_mul(8)
}

/// The loss, gradient and Hessian of logistic regression at `weights`,
/// over the rows of `x` (features, all of `y`'s length) where `valid` (if
/// given) is true, every feature is finite and `y` is not NaN.
///
/// With two `classes`, `weights` is one row `[b, w_1 .. w_f]` for
/// `classes[1]`, and a row's probability is `sigmoid(b + w . x)`. With
/// more, it is one such row per class, and probabilities are the softmax
/// of the rows' margins. A row whose `y` is none of `classes` counts as
/// belonging to none. Returns `None` as soon as `stop` says so (it is
/// asked for every block of a block of rows: a bounded amount of work).
///
/// # Panics
/// When `weights` is not `m (f + 1)` long, or there are fewer than two
/// classes: callers check both.
pub fn logistic_newton(
    x: &[&[f64]],
    y: &[f64],
    valid: Option<&[bool]>,
    classes: &[f64],
    weights: &[f64],
    stop: &(dyn Fn() -> bool + Sync),
) -> Option<NewtonTerms> {
    assert!(classes.len() >= 2, "two or more classes");
    let (f, n) = (x.len(), y.len());
    let p = f + 1;
    let m = if classes.len() == 2 { 1 } else { classes.len() };
    assert_eq!(weights.len(), m * p, "one weight row of features + 1 per modeled class");
    let size = m * p;
    // The full Hessian while summing, packed at the end.
    let mut terms = NewtonTerms { rows: 0, loss: 0.0, gradient: vec![0.0; size], hessian: vec![0.0; size * size] };

    // Block buffers, reused: the usable rows' features, their class (the
    // index in `classes`, or `classes.len()` for none), margins,
    // probabilities and `1 - p` per modeled class, and the scaled columns.
    let mut keep = vec![false; BLOCK];
    let mut xb = vec![vec![0.0; BLOCK]; f];
    let mut class = vec![0usize; BLOCK];
    let mut margin = vec![vec![0.0; BLOCK]; m];
    let mut prob = vec![vec![0.0; BLOCK]; m];
    let mut rest = vec![vec![0.0; BLOCK]; m];
    let mut residual = vec![0.0; BLOCK];
    let mut z = vec![vec![0.0; BLOCK]; p];
    let mut exps = vec![0.0; m.max(2)];

    let mut start = 0;
    while start < n {
        if stop() {
            return None;
        }
        let end = (start + BLOCK).min(n);
        let len = end - start;
        // Which rows are usable, column by column.
        let keep = &mut keep[..len];
        match valid {
            Some(v) => keep.copy_from_slice(&v[start..end]),
            None => keep.fill(true),
        }
        for (k, v) in keep.iter_mut().zip(&y[start..end]) {
            *k &= !v.is_nan();
        }
        for col in x {
            for (k, v) in keep.iter_mut().zip(&col[start..end]) {
                *k &= v.is_finite();
            }
        }
        let nb = keep.iter().filter(|&&k| k).count();
        if nb == 0 {
            start = end;
            continue;
        }
        // The usable rows' features: borrowed when every row is usable.
        let cols: Vec<&[f64]> = if nb == len {
            x.iter().map(|c| &c[start..end]).collect()
        } else {
            for (col, buf) in x.iter().zip(xb.iter_mut()) {
                let mut i = 0;
                for (v, &k) in col[start..end].iter().zip(keep.iter()) {
                    buf[i] = *v;
                    i += usize::from(k);
                }
            }
            xb.iter().map(|b| &b[..nb]).collect()
        };
        let mut i = 0;
        for (v, &k) in y[start..end].iter().zip(keep.iter()) {
            if k {
                class[i] = classes.iter().position(|c| c == v).unwrap_or(classes.len());
                i += 1;
            }
        }
        let class = &class[..nb];

        // Margins: b + w . x per modeled class, column by column.
        for (c, out) in margin.iter_mut().enumerate() {
            let w = &weights[c * p..(c + 1) * p];
            let out = &mut out[..nb];
            out.fill(w[0]);
            for (col, wj) in cols.iter().zip(&w[1..]) {
                for (o, v) in out.iter_mut().zip(col.iter()) {
                    *o += wj * v;
                }
            }
        }

        // Probabilities, `1 - p` (kept precise near 1) and the loss.
        if m == 1 {
            for i in 0..nb {
                let mi = margin[0][i];
                prob[0][i] = 1.0 / (1.0 + (-mi).exp());
                rest[0][i] = 1.0 / (1.0 + mi.exp());
                let yi = f64::from(u8::from(class[i] == 1));
                terms.loss += mi.max(0.0) + (-mi.abs()).exp().ln_1p() - yi * mi;
            }
        } else {
            for i in 0..nb {
                let (top_class, top) = (0..m)
                    .map(|c| (c, margin[c][i]))
                    .fold((0, f64::NEG_INFINITY), |best, (c, v)| if v > best.1 { (c, v) } else { best });
                for c in 0..m {
                    exps[c] = (margin[c][i] - top).exp();
                }
                let total: f64 = exps[..m].iter().sum();
                // `1 - p_c` as the other classes' share: for the top class
                // summed apart, so that it keeps its precision when p_c is
                // near 1; for the others `total - e_c` >= 1 loses nothing.
                let others_of_top: f64 =
                    exps[..m].iter().enumerate().filter(|&(d, _)| d != top_class).map(|(_, e)| e).sum();
                for c in 0..m {
                    prob[c][i] = exps[c] / total;
                    rest[c][i] = if c == top_class { others_of_top / total } else { (total - exps[c]) / total };
                }
                terms.loss += top + total.ln() - class.get(i).and_then(|&c| margin.get(c)).map_or(0.0, |mc| mc[i]);
            }
        }

        for c in 0..m {
            // Gradient: X~^T (p_c - y_c).
            let label = if m == 1 { 1 } else { c };
            for i in 0..nb {
                residual[i] = prob[c][i] - f64::from(u8::from(class[i] == label));
            }
            let r = &residual[..nb];
            let g = &mut terms.gradient[c * p..(c + 1) * p];
            g[0] += sum(r);
            for (gj, col) in g[1..].iter_mut().zip(&cols) {
                *gj += dot(col, r);
            }
            // Hessian blocks: X~^T diag(p_c (1 - p_c)) X~ on the diagonal,
            // -X~^T diag(p_c p_d) X~ off it, each the Gram matrix of the
            // columns scaled by the square root of the weights.
            for d in c..m {
                if stop() {
                    return None;
                }
                let (other, sign) = if d == c { (&rest[c], 1.0) } else { (&prob[d], -1.0) };
                for i in 0..nb {
                    z[0][i] = (prob[c][i] * other[i]).sqrt();
                }
                let (root, scaled) = z.split_first_mut().expect("p >= 1");
                for (out, col) in scaled.iter_mut().zip(&cols) {
                    for ((o, v), s) in out[..nb].iter_mut().zip(col.iter()).zip(&root[..nb]) {
                        *o = v * s;
                    }
                }
                let views: Vec<&[f64]> = z.iter().map(|c| &c[..nb]).collect();
                let upper = gram_upper(&views, stop)?;
                for a in 0..p {
                    for b in a..p {
                        let v = sign * upper[a * p + b];
                        let (ra, rb) = (c * p + a, d * p + b);
                        terms.hessian[ra * size + rb] += v;
                        if (c, a) != (d, b) {
                            // The mirrored entry: (d, b) x (c, a).
                            terms.hessian[rb * size + ra] += v;
                        }
                        if c != d && a != b {
                            // An off-diagonal block is symmetric too.
                            let (ra2, rb2) = (c * p + b, d * p + a);
                            terms.hessian[ra2 * size + rb2] += v;
                            terms.hessian[rb2 * size + ra2] += v;
                        }
                    }
                }
            }
        }
        terms.rows += nb as u64;
        start = end;
    }
    terms.hessian = pack_upper(&terms.hessian, size);
    Some(terms)
}

/// The upper triangle of the row-major `n x n` matrix `full`, row by row.
pub fn pack_upper(full: &[f64], n: usize) -> Vec<f64> {
    (0..n).flat_map(|a| full[a * n + a..(a + 1) * n].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same sums row by row, in the plainest form.
    fn reference(x: &[Vec<f64>], y: &[f64], classes: &[f64], w: &[f64]) -> NewtonTerms {
        let p = x.len() + 1;
        let m = if classes.len() == 2 { 1 } else { classes.len() };
        let size = m * p;
        let mut t = NewtonTerms { rows: 0, loss: 0.0, gradient: vec![0.0; size], hessian: vec![0.0; size * size] };
        for i in 0..y.len() {
            if y[i].is_nan() || x.iter().any(|c| !c[i].is_finite()) {
                continue;
            }
            t.rows += 1;
            let row: Vec<f64> = std::iter::once(1.0).chain(x.iter().map(|c| c[i])).collect();
            let margins: Vec<f64> = (0..m).map(|c| (0..p).map(|j| w[c * p + j] * row[j]).sum()).collect();
            let (probs, label): (Vec<f64>, Vec<f64>) = if m == 1 {
                let pr = 1.0 / (1.0 + (-margins[0]).exp());
                t.loss += (1.0 + margins[0].exp()).ln() - if y[i] == classes[1] { margins[0] } else { 0.0 };
                (vec![pr], vec![f64::from(u8::from(y[i] == classes[1]))])
            } else {
                let total: f64 = margins.iter().map(|v| v.exp()).sum();
                let ys: Vec<f64> = classes.iter().map(|c| f64::from(u8::from(y[i] == *c))).collect();
                t.loss += total.ln() - margins.iter().zip(&ys).map(|(a, b)| a * b).sum::<f64>();
                (margins.iter().map(|v| v.exp() / total).collect(), ys)
            };
            for c in 0..m {
                for a in 0..p {
                    t.gradient[c * p + a] += (probs[c] - label[c]) * row[a];
                    for d in 0..m {
                        let v = if c == d { probs[c] * (1.0 - probs[c]) } else { -probs[c] * probs[d] };
                        for b in 0..p {
                            t.hessian[(c * p + a) * size + d * p + b] += v * row[a] * row[b];
                        }
                    }
                }
            }
        }
        t.hessian = pack_upper(&t.hessian, size);
        t
    }

    fn data(n: usize, f: usize, k: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let x: Vec<Vec<f64>> = (0..f).map(|_| (0..n).map(|_| next() * 4.0 - 2.0).collect()).collect();
        let y = (0..n).map(|_| (next() * k as f64).floor()).collect();
        (x, y)
    }

    fn close(a: &NewtonTerms, b: &NewtonTerms) {
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.hessian.len(), b.hessian.len());
        let near = |u: f64, v: f64| (u - v).abs() <= 1e-9 * (1.0 + u.abs().max(v.abs()));
        assert!(near(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
        for (u, v) in a.gradient.iter().zip(&b.gradient).chain(a.hessian.iter().zip(&b.hessian)) {
            assert!(near(*u, *v), "{u} vs {v}");
        }
    }

    #[test]
    fn the_fused_pass_equals_the_row_by_row_sums_binary_and_multinomial() {
        for (k, n) in [(2, 2500), (3, 2100), (4, 3000)] {
            let (mut x, mut y) = data(n, 3, k);
            // Rows that are skipped: a NaN target, infinite and NaN features.
            y[5] = f64::NAN;
            x[1][1030] = f64::INFINITY;
            x[2][2047] = f64::NAN;
            let m = if k == 2 { 1 } else { k };
            let w: Vec<f64> = (0..m * 4).map(|i| (i as f64 * 0.37).sin()).collect();
            let classes: Vec<f64> = (0..k).map(|c| c as f64).collect();
            let views: Vec<&[f64]> = x.iter().map(Vec::as_slice).collect();
            let fused = logistic_newton(&views, &y, None, &classes, &w, &|| false).unwrap();
            close(&fused, &reference(&x, &y, &classes, &w));
        }
    }

    #[test]
    fn rows_marked_invalid_are_skipped_and_unknown_classes_belong_to_none() {
        let (x, mut y) = data(100, 2, 2);
        let valid: Vec<bool> = (0..100).map(|i| i % 3 != 0).collect();
        y[1] = 9.0; // neither class
        let views: Vec<&[f64]> = x.iter().map(Vec::as_slice).collect();
        let w = [0.1, -0.2, 0.3];
        let fused = logistic_newton(&views, &y, Some(&valid), &[0.0, 1.0], &w, &|| false).unwrap();
        let kept: Vec<usize> = (0..100).filter(|i| valid[*i]).collect();
        let xs: Vec<Vec<f64>> = x.iter().map(|c| kept.iter().map(|&i| c[i]).collect()).collect();
        let ys: Vec<f64> = kept.iter().map(|&i| y[i]).collect();
        close(&fused, &reference(&xs, &ys, &[0.0, 1.0], &w));
    }

    #[test]
    fn it_stops_when_asked() {
        let (x, y) = data(5000, 2, 2);
        let views: Vec<&[f64]> = x.iter().map(Vec::as_slice).collect();
        assert!(logistic_newton(&views, &y, None, &[0.0, 1.0], &[0.0; 3], &|| true).is_none());
    }
}
