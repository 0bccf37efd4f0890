//! A deliberately misbehaving stage for the sandbox tests. `mode` picks the
//! misbehaviour:
//!
//! * `spin`: loops forever (must be stopped by the deadline);
//! * `hog`: allocates without bound (must hit the memory cap);
//! * `snoop`: tries to read a file, the environment and the network, and
//!   reports what it got as a one-row batch (must get nothing);
//! * `panic`: panics (the host must name the stage and the message);
//! * `no_columns`: emits its rows with every column dropped;
//! * `fat_rows`: emits, for each batch, one row of `n` bytes of text no
//!   compressor shrinks much (the writer must not hold a row group of them
//!   whole);
//! * `long_name`: names a column with `n` bytes;
//! * `quarantine_names`: quarantines `n` rows of 1,000 boolean columns with
//!   1 KiB names (each row rendered with every name);
//! * `long_error`: fails with a message of `n` bytes;
//! * `fail`: returns a stage error;
//! * `random`: passes rows through with a column of WASI random numbers
//!   (every attempt of a task must draw the same ones).
//!
//! And attacks on the host through its own work, each sized by `n` (must be
//! stopped by the host memory budget or the deadline, the host going on):
//!
//! * `histogram`: a histogram of `n` bins (`u32::MAX`: 34 GB of counts);
//! * `concat`: a column concatenated with itself, doubling, `n` times;
//! * `hoard`: `n` columns of a million floats, every handle kept;
//! * `views`: `n` one-row slices of fresh million-row columns, each
//!   pinning its parent's buffer after the parent handle is dropped;
//! * `log`: `n` log lines of 16 MiB;
//! * `distinct`: a column of `n` distinct values built in the host, then
//!   counted;
//! * `gram`: a Gram matrix of `n` views of one million-row column;
//! * `matvec`, `hash`: the same over `n` views (columns x rows work);
//! * `logistic`: a logistic regression Newton step over `n` views (two
//!   classes: an `(n + 1)`-square Hessian over a million rows);
//! * `logistic_classes`: the same over one column with `n` classes (an
//!   `(2 n)`-square Hessian, `n^2 / 2` blocks of it per block of rows);
//! * `solve`: an `n x n` positive definite system solved on the host;
//! * `take`: a 1 MiB string taken `n` times;
//! * `quarantine`: `n` rows quarantined with 32 MiB reasons;
//! * `sleep`: a WASI sleep of `n` seconds;
//! * `sleep_forever`: a wait on the monotonic instant `u64::MAX`;
//! * `alias`: a batch of one million-row column under `n` names, filtered
//!   (a copy of every column);
//! * `wide`: a batch of `n` columns;
//! * `schema`: a float column in partition 0, text elsewhere.
//!
//! With `partition = N` it misbehaves only in partition N and passes the
//! other partitions' batches through.

use serde::Deserialize;
use wasmpipe_sdk::{Batch, Column, Result, Task, Transformer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    /// Misbehave only in this partition; pass batches through elsewhere.
    partition: Option<u32>,
    /// How hard to push, per mode.
    #[serde(default)]
    n: u64,
}

struct Hostile(Config, Task, u64);

/// A million floats, built in the host.
fn million() -> Result<Column> {
    let values: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
    Column::from_f64(&values, None)
}

fn outcome<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("denied: {e}"),
    }
}

impl Transformer for Hostile {
    fn open(task: &Task) -> Result<Self> {
        let mut config: Config = wasmpipe_sdk::config()?;
        if config.partition.is_some_and(|p| p != task.partition) {
            config.mode = "pass".into();
        }
        Ok(Hostile(config, task.clone(), 0))
    }

    fn transform(&mut self, batch: Batch) -> Result<Option<Batch>> {
        match self.0.mode.as_str() {
            "pass" => Ok(Some(batch)),
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![7u8; 1 << 20]));
                }
            }
            "snoop" => {
                let file = outcome(std::fs::read("/etc/passwd"));
                let env = outcome(std::env::var("HOME"));
                let net = outcome(std::net::TcpStream::connect("127.0.0.1:80"));
                let _ = batch;
                let col = |s: String| Column::from_utf8(&[Some(s)]);
                Ok(Some(Batch::from_columns(&[
                    ("file".into(), &col(file)?),
                    ("env".into(), &col(env)?),
                    ("net".into(), &col(net)?),
                ])?))
            }
            "panic" => panic!("hostile stage panicked on purpose"),
            "random" => {
                let mut bytes = [0u8; 8];
                getrandom(&mut bytes);
                let draw = u64::from_le_bytes(bytes) as f64;
                let n = batch.num_rows() as usize;
                let column = Column::from_f64(&vec![draw; n], None)?;
                Ok(Some(batch.with_column("random", &column)?))
            }
            "histogram" => {
                let column = Column::from_f64(&[1.0, 2.0], None)?;
                let counts = column.histogram(self.0.n as u32, 0.0, 1.0)?;
                wasmpipe_sdk::fail!("histogram of {} bins came back", counts.len())
            }
            "concat" => {
                let mut column = million()?;
                for _ in 0..self.0.n {
                    column = wasmpipe_sdk::concat(&[&column, &column])?;
                }
                wasmpipe_sdk::fail!("concatenated {} rows", column.len())
            }
            "hoard" => {
                let hoard = (0..self.0.n).map(|_| million()).collect::<Result<Vec<_>>>()?;
                wasmpipe_sdk::fail!("kept {} columns", hoard.len())
            }
            "views" => {
                let mut views = Vec::new();
                for _ in 0..self.0.n {
                    views.push(million()?.slice(0, 1)?);
                }
                wasmpipe_sdk::fail!("kept {} views", views.len())
            }
            "log" => {
                let line = "x".repeat(16 << 20);
                for _ in 0..self.0.n {
                    wasmpipe_sdk::info!("{line}");
                }
                Ok(Some(batch))
            }
            "distinct" => {
                let values: Vec<f64> = (0..self.0.n).map(|i| i as f64).collect();
                let column = Column::from_f64(&values, None)?;
                let doubled = wasmpipe_sdk::concat(&[&column, &column])?;
                let count = doubled.distinct_count()?;
                wasmpipe_sdk::fail!("counted {count} distinct values")
            }
            "gram" | "matvec" | "hash" | "logistic" => {
                let column = million()?;
                let views = (0..self.0.n).map(|_| column.slice(0, column.len())).collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Column> = views.iter().collect();
                match self.0.mode.as_str() {
                    "gram" => drop(wasmpipe_sdk::gram(&refs, &column, true)?),
                    "matvec" => drop(wasmpipe_sdk::matvec(&refs, &vec![1.0; refs.len()], 0.0)?),
                    "logistic" => {
                        drop(wasmpipe_sdk::logistic_newton(&refs, &column, &[0.0, 1.0], &vec![0.0; refs.len() + 1])?)
                    }
                    _ => drop(wasmpipe_sdk::hash_rows(&refs, 7)?),
                }
                wasmpipe_sdk::fail!("{} over {} columns came back", self.0.mode, refs.len())
            }
            "logistic_classes" => {
                let column = million()?;
                let classes: Vec<f64> = (0..self.0.n).map(|c| c as f64).collect();
                let weights = vec![0.0; 2 * classes.len()];
                drop(wasmpipe_sdk::logistic_newton(&[&column], &column, &classes, &weights)?);
                wasmpipe_sdk::fail!("a Newton step of {} classes came back", classes.len())
            }
            "solve" => {
                let n = self.0.n as usize;
                let mut a = vec![1.0; n * n];
                (0..n).for_each(|i| a[i * n + i] = n as f64);
                let x = wasmpipe_sdk::solve_spd(a, vec![1.0; n], n);
                wasmpipe_sdk::fail!("a {n} x {n} system came back: {}", x.is_ok())
            }
            "take" => {
                let long = Column::from_utf8(&[Some("y".repeat(1 << 20))])?;
                let zeros: Vec<i64> = vec![0; self.0.n as usize];
                let indices = Column::from_i64(&zeros, None)?;
                let taken = long.take(&indices)?;
                wasmpipe_sdk::fail!("took {} strings", taken.len())
            }
            "quarantine" => {
                let reason = "r".repeat(32 << 20);
                let one = batch.slice(0, 1)?;
                for _ in 0..self.0.n {
                    wasmpipe_sdk::quarantine(&one, std::slice::from_ref(&reason))?;
                }
                Ok(Some(batch))
            }
            "sleep" => {
                // WASI directly, as std's sleep does on wasip2 (and as it
                // cannot on wasm32-unknown-unknown, which has no clock).
                wasi::clocks::monotonic_clock::subscribe_duration(self.0.n * 1_000_000_000).block();
                Ok(Some(batch))
            }
            "sleep_forever" => {
                wasi::clocks::monotonic_clock::subscribe_instant(u64::MAX).block();
                Ok(Some(batch))
            }
            "alias" | "wide" => {
                let column = if self.0.mode == "alias" { million()? } else { Column::from_f64(&[1.0], None)? };
                let names: Vec<(String, &Column)> = (0..self.0.n).map(|i| (format!("c{i}"), &column)).collect();
                let wide = Batch::from_columns(&names)?;
                let keep = Column::from_bool(&vec![true; column.len() as usize], None)?;
                let copy = wide.filter(&keep)?;
                wasmpipe_sdk::fail!("filtered {} columns", copy.schema().len())
            }
            "schema" => {
                let n = batch.num_rows() as usize;
                let column = if self.1.partition == 0 {
                    Column::from_f64(&vec![1.5; n], None)?
                } else {
                    Column::from_utf8(&vec![Some("text".to_string()); n])?
                };
                Ok(Some(batch.with_column("mixed", &column)?))
            }
            "no_columns" => Ok(Some(batch.select(&[])?)),
            "fat_rows" => {
                // 64 symbols drawn by xorshift, a new stream each batch.
                const SYMBOLS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                self.2 += 1;
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ self.2;
                let text: String = (0..self.0.n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        SYMBOLS[(x >> 58) as usize] as char
                    })
                    .collect();
                let column = Column::from_utf8(&[Some(text)])?;
                Ok(Some(Batch::from_columns(&[("blob".to_string(), &column)])?))
            }
            "long_name" => {
                let column = Column::from_f64(&[1.0], None)?;
                Ok(Some(Batch::from_columns(&[("n".repeat(self.0.n as usize), &column)])?))
            }
            "quarantine_names" => {
                let flags = Column::from_bool(&vec![true; self.0.n as usize], None)?;
                let names: Vec<(String, &Column)> =
                    (0..1000).map(|i| (format!("{i:04}{}", "n".repeat(1020)), &flags)).collect();
                let rows = Batch::from_columns(&names)?;
                wasmpipe_sdk::quarantine(&rows, &vec!["r".to_string(); self.0.n as usize])?;
                Ok(Some(batch))
            }
            "long_error" => wasmpipe_sdk::fail!("{}", "e".repeat(self.0.n as usize)),
            "fail" => wasmpipe_sdk::fail!("hostile stage failed on purpose"),
            other => Err(wasmpipe_sdk::Error::InvalidConfig(format!("unknown mode {other:?}"))),
        }
    }
}

/// Fill `bytes` from WASI's random numbers.
fn getrandom(bytes: &mut [u8]) {
    let drawn = wasi::random::random::get_random_bytes(bytes.len() as u64);
    bytes.copy_from_slice(&drawn);
}

wasmpipe_sdk::export_transformer!(Hostile);
