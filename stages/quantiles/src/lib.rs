//! Exact order statistics of a partitioned column, found in passes: a
//! library (not a stage) shared by `imputer` (median), `bucketizer`
//! (quantile edges) and `split` (stratified cuts).
//!
//! A [`Search`] wants the values at some 0-based ranks of the sorted,
//! non-null, non-NaN values of a column, given their count `n`, `min` and
//! `max` (one `summarize` pass). Each pending rank has a window `[lo, hi]`
//! known to hold it. Every pass, each partition tallies each distinct
//! window ([`Tally`]): the number of values below `lo`, the number inside,
//! and either a histogram of [`BINS`] equal-width bins over the window or,
//! once at most [`COLLECT`] values are expected inside, the values
//! themselves. Tallies merge by addition (values by concatenation: they are
//! sorted before use, so the order of partitions does not matter). From the
//! merged tally a collected window answers its ranks exactly; a histogram
//! window narrows to the bin holding the rank, widened by one bin on each
//! side so that rounding of the bin edges (computed here and in the host)
//! can never lose the rank: the width shrinks by at least 1024/3 per pass.
//! A window that stops shrinking (values a few ulps apart) is collected.
//!
//! So the answer is exact, with no error bound to state: with at most
//! 65,536 values, pass 1 collects them all; each further factor of ~340 in
//! the spread of the values around a rank costs at most one more pass.
//! Ranks are counted with the `compare` kernel, so the counts are exact;
//! [`tally_column`] uses only kernels but for the collected values.

use serde::{Deserialize, Serialize};
use wasmpipe_sdk::{Column, Compare, Result};

/// Bins of a histogram window.
pub const BINS: usize = 1024;
/// The most values a window may expect to hold to be collected.
pub const COLLECT: u64 = 1 << 16;

/// Values in `[lo, hi]`, to be counted by histogram or collected.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Window {
    pub lo: f64,
    pub hi: f64,
    pub collect: bool,
}

impl Window {
    /// The `i`-th of the `BINS + 1` bin edges.
    fn edge(&self, i: usize) -> f64 {
        if i == 0 {
            return self.lo;
        }
        if i >= BINS {
            return self.hi;
        }
        let t = i as f64 / BINS as f64;
        (self.lo * (1.0 - t) + self.hi * t).clamp(self.lo, self.hi)
    }

    fn key(&self) -> (u64, u64, bool) {
        (self.lo.to_bits(), self.hi.to_bits(), self.collect)
    }
}

/// One window's counts over some rows; tallies of disjoint rows merge.
#[derive(Serialize, Deserialize, Clone, Default, Debug, PartialEq)]
pub struct Tally {
    /// Values below `lo`.
    pub below: u64,
    /// Values in `[lo, hi]`.
    pub inside: u64,
    /// Histogram of the inside values (histogram windows).
    pub hist: Vec<u64>,
    /// The inside values (collect windows), in no particular order.
    pub values: Vec<f64>,
}

impl Tally {
    /// The tally of `values` (NaN skipped), computed in the guest.
    pub fn of_values(values: &[f64], w: &Window) -> Tally {
        let mut t = Tally::default();
        if !w.collect && w.lo < w.hi {
            t.hist = vec![0; BINS];
        }
        for &x in values.iter().filter(|x| !x.is_nan()) {
            if x < w.lo {
                t.below += 1;
            } else if x <= w.hi {
                t.inside += 1;
                if w.collect {
                    t.values.push(x);
                } else if !t.hist.is_empty() {
                    let b = ((x - w.lo) / (w.hi - w.lo) * BINS as f64) as usize;
                    t.hist[b.min(BINS - 1)] += 1;
                }
            }
        }
        t
    }

    /// Add the tally of other rows.
    pub fn merge(&mut self, other: Tally) {
        self.below += other.below;
        self.inside += other.inside;
        if self.hist.is_empty() {
            self.hist = other.hist;
        } else {
            self.hist.iter_mut().zip(other.hist).for_each(|(a, b)| *a += b);
        }
        self.values.extend(other.values);
    }
}

/// The number of true rows of a mask (nulls not counted).
fn count(mask: &Column) -> Result<u64> {
    Ok(mask.summarize()?.sum as u64)
}

/// The tally of column `x` on window `w`, by kernels (`compare`, `and`,
/// `summarize`, `histogram`); collected values are copied into the guest.
pub fn tally_column(x: &Column, w: &Window) -> Result<Tally> {
    let below = count(&x.compare(Compare::Lt, w.lo)?)?;
    let mask = x.compare(Compare::Ge, w.lo)?.and(&x.compare(Compare::Le, w.hi)?)?;
    let inside = count(&mask)?;
    let mut t = Tally { below, inside, ..Tally::default() };
    if w.collect {
        if inside > 0 {
            t.values = x.filter_by(&mask)?.read_f64()?;
        }
    } else if w.lo < w.hi {
        t.hist = x.histogram(BINS as u32, w.lo, w.hi)?;
    }
    Ok(t)
}

/// One pass of a [`Search`]: the search and the tallies of its windows
/// over the rows seen so far. A partition's fit state during a pass;
/// passes over disjoint rows merge, and the merged pass steps the search.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Pass {
    /// The search this pass serves.
    pub search: Search,
    tallies: Vec<Tally>,
}

impl Pass {
    /// A pass over no rows yet.
    pub fn new(search: Search) -> Pass {
        let tallies = vec![Tally::default(); search.windows().len()];
        Pass { search, tallies }
    }

    /// Tally a column (on kernels, see [`tally_column`]).
    pub fn tally_column(&mut self, x: &Column) -> Result<()> {
        for (w, t) in self.search.windows().iter().zip(&mut self.tallies) {
            t.merge(tally_column(x, w)?);
        }
        Ok(())
    }

    /// Tally values already in the guest.
    pub fn tally_values(&mut self, values: &[f64]) {
        for (w, t) in self.search.windows().iter().zip(&mut self.tallies) {
            t.merge(Tally::of_values(values, w));
        }
    }

    /// The pass over the rows of both.
    pub fn merge(mut self, other: Pass) -> Pass {
        self.tallies.iter_mut().zip(other.tallies).for_each(|(a, b)| a.merge(b));
        self
    }

    /// The search advanced by this (merged) pass.
    pub fn step(mut self) -> std::result::Result<Search, String> {
        self.search.step(&mut self.tallies)?;
        Ok(self.search)
    }
}

/// Count, min and max of a column's non-null, non-NaN values: what a
/// [`Search`] starts from. Extents merge by taking both; the empty extent
/// is the [`Default`].
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Extent {
    /// Values seen.
    pub n: u64,
    /// The least of them (+inf when none).
    pub min: f64,
    /// The greatest of them (-inf when none).
    pub max: f64,
}

impl Default for Extent {
    fn default() -> Self {
        Extent { n: 0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Extent {
    /// Add `n` values that lie in `[min, max]`.
    pub fn add(&mut self, n: u64, min: f64, max: f64) {
        if n > 0 {
            *self = Extent { n: self.n + n, min: self.min.min(min), max: self.max.max(max) };
        }
    }

    /// Both extents in one.
    pub fn merge(mut self, other: Extent) -> Extent {
        self.add(other.n, other.min, other.max);
        self
    }

    /// The search for the values at `ranks`, each below `n`.
    pub fn search(&self, ranks: Vec<u64>) -> Search {
        Search::new(ranks, self.n, self.min, self.max)
    }
}

/// The search for the values at `ranks` of one column.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Search {
    /// 0-based ranks wanted, each below `n`.
    pub ranks: Vec<u64>,
    /// The value at each rank, once found.
    pub found: Vec<Option<f64>>,
    /// The window of each rank still pending.
    pending: Vec<Window>,
}

impl Search {
    /// Start from the summary of the column: `n` values in `[min, max]`.
    /// Panics if a rank is not below `n`.
    pub fn new(ranks: Vec<u64>, n: u64, min: f64, max: f64) -> Search {
        assert!(ranks.iter().all(|&r| r < n), "ranks {ranks:?} of {n} values");
        let window = Window { lo: min, hi: max, collect: n <= COLLECT };
        let found = ranks.iter().map(|_| (min == max).then_some(min)).collect();
        Search { pending: vec![window; ranks.len()], ranks, found }
    }

    /// True once every rank is found.
    pub fn done(&self) -> bool {
        self.found.iter().all(Option::is_some)
    }

    /// The values at the ranks, once done.
    pub fn values(&self) -> Option<Vec<f64>> {
        self.found.iter().copied().collect()
    }

    /// The distinct windows the next pass must tally, in a fixed order.
    pub fn windows(&self) -> Vec<Window> {
        let mut w: Vec<Window> =
            self.found.iter().zip(&self.pending).filter(|(f, _)| f.is_none()).map(|(_, w)| *w).collect();
        w.sort_by_key(Window::key);
        w.dedup_by_key(|w| w.key());
        w
    }

    /// Advance with the merged tallies of [`Search::windows`], in order.
    pub fn step(&mut self, tallies: &mut [Tally]) -> std::result::Result<(), String> {
        let windows = self.windows();
        if windows.len() != tallies.len() {
            return Err(format!("{} tallies for {} windows", tallies.len(), windows.len()));
        }
        for t in tallies.iter_mut() {
            t.values.sort_by(f64::total_cmp);
        }
        for i in 0..self.ranks.len() {
            if self.found[i].is_some() {
                continue;
            }
            let w = self.pending[i];
            let t = &tallies[windows.iter().position(|v| v.key() == w.key()).expect("window tallied")];
            let rank = self.ranks[i];
            if rank < t.below || rank - t.below >= t.inside {
                return Err(format!(
                    "rank {rank} is not in [{}, {}] ({} below, {} inside)",
                    w.lo, w.hi, t.below, t.inside
                ));
            }
            let local = rank - t.below;
            if w.collect {
                self.found[i] = t.values.get(local as usize).copied();
                if self.found[i].is_none() {
                    return Err(format!("{} values collected, {} counted", t.values.len(), t.inside));
                }
                continue;
            }
            // Histogram: the bin holding the rank, one bin either side.
            let mut before = 0u64;
            let bin = t.hist.iter().position(|&c| {
                before += c;
                before > local
            });
            let next = match bin {
                Some(b) => {
                    let (lo, hi) = (b.saturating_sub(1), (b + 2).min(BINS));
                    let expect: u64 = t.hist[lo..hi].iter().sum();
                    let next = Window { lo: w.edge(lo), hi: w.edge(hi), collect: expect <= COLLECT };
                    if (next.lo, next.hi) == (w.lo, w.hi) { Window { collect: true, ..next } } else { next }
                }
                // The histogram lost values to rounding at the edges: collect.
                None => Window { collect: true, ..w },
            };
            if next.lo == next.hi {
                self.found[i] = Some(next.lo);
            }
            self.pending[i] = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a search to the end over `parts`, tallying in the guest.
    fn search(parts: &[Vec<f64>], ranks: Vec<u64>) -> (Vec<f64>, u32) {
        let all: Vec<f64> = parts.concat().into_iter().filter(|x| !x.is_nan()).collect();
        let (min, max) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let mut s = Search::new(ranks, all.len() as u64, min, max);
        let mut passes = 0;
        while !s.done() {
            passes += 1;
            assert!(passes < 20, "no progress");
            let mut tallies: Vec<Tally> = s
                .windows()
                .iter()
                .map(|w| {
                    let mut t = Tally::default();
                    // Merge in reverse order: the answer must not depend on it.
                    for p in parts.iter().rev() {
                        t.merge(Tally::of_values(p, w));
                    }
                    t
                })
                .collect();
            s.step(&mut tallies).unwrap();
        }
        (s.values().unwrap(), passes)
    }

    fn sorted(parts: &[Vec<f64>]) -> Vec<f64> {
        let mut v: Vec<f64> = parts.concat().into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn small_data_is_collected_in_one_pass() {
        let parts = vec![vec![5.0, 1.0, f64::NAN, 3.0], vec![2.0, 2.0], vec![], vec![9.0, -4.0]];
        let (values, passes) = search(&parts, vec![0, 3, 3, 6]);
        assert_eq!(values, vec![-4.0, 2.0, 2.0, 9.0]);
        assert_eq!(passes, 1);
    }

    #[test]
    fn large_data_narrows_by_histograms_and_is_exact() {
        // 300,000 values spread over 12 orders of magnitude, with ties.
        let parts: Vec<Vec<f64>> = (0..7)
            .map(|p| (0..300_000 / 7).map(|i| ((i * 7 + p) as f64 * 0.618).fract() * 10f64.powi(i % 12)).collect())
            .collect();
        let want = sorted(&parts);
        let ranks: Vec<u64> = vec![0, 1, 1000, want.len() as u64 / 2, want.len() as u64 - 2, want.len() as u64 - 1];
        let (values, passes) = search(&parts, ranks.clone());
        for (r, v) in ranks.iter().zip(values) {
            assert_eq!(v, want[*r as usize], "rank {r}");
        }
        assert!((2..=6).contains(&passes), "{passes} passes");
    }

    #[test]
    fn heavy_ties_and_constant_columns_resolve() {
        let parts = vec![vec![1.0; 100_000], vec![2.0; 50_000], vec![1.0; 1]];
        let (values, _) = search(&parts, vec![0, 100_000, 100_001, 150_000]);
        assert_eq!(values, vec![1.0, 1.0, 2.0, 2.0]);
        let s = Search::new(vec![0, 4], 5, 3.0, 3.0);
        assert!(s.done() && s.values() == Some(vec![3.0, 3.0]) && s.windows().is_empty());
    }
}
