//! Solving a symmetric positive definite system by Cholesky decomposition,
//! with the inner products on the vectorized [`dot`].

use crate::dot;

/// Solve `a x = b` for symmetric positive definite `a` (row-major `n x n`,
/// `n = b.len()`): `Ok(x)`, or `Err(j)` when `a` is not positive definite,
/// `j` being the first column whose pivot is not positive (or not finite).
/// `a` is overwritten with its factor. Returns `None` as soon as `stop`
/// says so (asked once per column).
///
/// # Panics
/// When `a` is not `n x n`: callers check.
pub fn solve_spd(a: &mut [f64], b: &[f64], stop: &dyn Fn() -> bool) -> Option<Result<Vec<f64>, usize>> {
    let n = b.len();
    assert_eq!(a.len(), n * n, "a is n x n");
    // The lower factor L, row by row in place: row i's first j entries
    // and row j's are contiguous, so each entry is one dot product.
    for j in 0..n {
        if stop() {
            return None;
        }
        let row_j = &mut a[j * n..(j + 1) * n];
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if d <= 0.0 || !d.is_finite() {
            return Some(Err(j));
        }
        let d = d.sqrt();
        row_j[j] = d;
        for i in j + 1..n {
            let (upto_i, from_i) = a.split_at_mut(i * n);
            let row_j = &upto_i[j * n..j * n + j];
            let row_i = &mut from_i[..n];
            row_i[j] = (row_i[j] - dot(&row_i[..j], row_j)) / d;
        }
    }
    // Forward substitution L z = b, then back substitution L^T x = z.
    let mut x = b.to_vec();
    for i in 0..n {
        let s = x[i] - dot(&a[i * n..i * n + i], &x[..i]);
        x[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = x[i];
        for k in i + 1..n {
            s -= a[k * n + i] * x[k];
        }
        x[i] = s / a[i * n + i];
    }
    Some(Ok(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_solves_a_known_system_and_names_the_first_bad_pivot() {
        let mut a = vec![4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let x = solve_spd(&mut a, &[0.0, -5.0, 7.0], &|| false).unwrap().unwrap();
        for (got, want) in x.iter().zip([1.0, -2.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{x:?}");
        }
        assert_eq!(solve_spd(&mut [1.0, 1.0, 1.0, 1.0], &[1.0, 1.0], &|| false), Some(Err(1)));
        assert_eq!(solve_spd(&mut [f64::NAN], &[1.0], &|| false), Some(Err(0)));
        assert_eq!(solve_spd(&mut [], &[], &|| false), Some(Ok(vec![])));
        assert_eq!(solve_spd(&mut [2.0], &[1.0], &|| true), None);
    }

    #[test]
    fn a_large_system_is_solved_to_rounding() {
        // A = M M^T + n I, x known; b = A x.
        let n = 150;
        let m: Vec<f64> = (0..n * n).map(|i| ((i * 7919 % 1000) as f64 / 500.0) - 1.0).collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>() + if i == j { n as f64 } else { 0.0 };
            }
        }
        let want: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
        let b: Vec<f64> = (0..n).map(|i| (0..n).map(|j| a[i * n + j] * want[j]).sum()).collect();
        let x = solve_spd(&mut a, &b, &|| false).unwrap().unwrap();
        for (g, w) in x.iter().zip(&want) {
            assert!((g - w).abs() < 1e-10, "{g} vs {w}");
        }
    }
}
