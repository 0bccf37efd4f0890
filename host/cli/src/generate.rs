//! `wasmpipe gen`: synthetic regression and classification data of any
//! size, streamed to Parquet in any store (for scale tests and benches).
//!
//! Features are independent standard normals. Regression targets are
//! `x · w + b + noise · ε`; classification targets are drawn from the
//! softmax of `x · W_k + b_k` (a logistic model for two classes), so a
//! correctly specified model can recover the weights. The weights come
//! from the seed too, and the same seed always gives the same bytes.

use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use wasmpipe_storage::Storage;

/// What to generate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// A continuous `target` (f64).
    Regression,
    /// A class label `target` (int64, 0..classes).
    Classification,
}

/// Generate data.
#[derive(clap::Args)]
pub struct GenArgs {
    /// regression or classification.
    kind: Kind,
    /// Where to write the Parquet file: a path or a URL (`s3://…/x.parquet`).
    #[arg(long)]
    out: String,
    /// Rows.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Feature columns (`f0`, `f1`, ...).
    #[arg(long, default_value_t = 20)]
    features: usize,
    /// Classes, for classification.
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Standard deviation of the regression noise.
    #[arg(long, default_value_t = 1.0)]
    noise: f64,
    /// Rows per Parquet row group: each row group is one partition.
    #[arg(long, default_value_t = 1_000_000)]
    row_group_rows: usize,
    /// Seed of the data and of the true weights.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const BATCH: u64 = 65_536;

pub fn generate(args: GenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.features > 0, "--features must be at least 1");
    anyhow::ensure!(args.row_group_rows > 0, "--row-group-rows must be at least 1");
    anyhow::ensure!(
        matches!(args.kind, Kind::Regression) || args.classes >= 2,
        "--classes must be at least 2 for classification"
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let outputs = match args.kind {
        Kind::Regression => 1,
        Kind::Classification if args.classes == 2 => 1,
        Kind::Classification => args.classes,
    };
    // True weights (and intercepts) of every output, drawn first.
    let weights: Vec<Vec<f64>> =
        (0..outputs).map(|_| (0..=args.features).map(|_| rng.sample::<f64, _>(StandardNormal)).collect()).collect();

    let mut fields: Vec<Field> =
        (0..args.features).map(|j| Field::new(format!("f{j}"), DataType::Float64, false)).collect();
    fields.push(match args.kind {
        Kind::Regression => Field::new("target", DataType::Float64, false),
        Kind::Classification => Field::new("target", DataType::Int64, false),
    });
    let schema = Arc::new(Schema::new(fields));

    let cwd = std::env::current_dir().context("current directory")?;
    let at = Storage::new(cwd).resolve(&args.out)?;
    let io = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start I/O")?;
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(args.row_group_rows))
        .set_created_by(format!("wasmpipe gen {}", env!("CARGO_PKG_VERSION")))
        .build();
    let sink = BufWriter::new(at.store().clone(), at.path().clone());
    let mut writer = AsyncArrowWriter::try_new(sink, schema.clone(), Some(props))?;
    let mut written = 0;
    while written < args.rows {
        let n = BATCH.min(args.rows - written) as usize;
        let x: Vec<Vec<f64>> =
            (0..args.features).map(|_| (0..n).map(|_| rng.sample::<f64, _>(StandardNormal)).collect()).collect();
        let margin = |w: &[f64], i: usize| w[args.features] + (0..args.features).map(|j| w[j] * x[j][i]).sum::<f64>();
        let target: ArrayRef = match args.kind {
            Kind::Regression => Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| margin(&weights[0], i) + args.noise * rng.sample::<f64, _>(StandardNormal)),
            )),
            Kind::Classification => Arc::new(Int64Array::from_iter_values((0..n).map(|i| {
                let u: f64 = rng.random();
                if outputs == 1 {
                    i64::from(u < 1.0 / (1.0 + (-margin(&weights[0], i)).exp()))
                } else {
                    let logits: Vec<f64> = weights.iter().map(|w| margin(w, i)).collect();
                    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let p: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
                    let total: f64 = p.iter().sum();
                    let mut acc = 0.0;
                    p.iter()
                        .position(|pk| {
                            acc += pk / total;
                            u < acc
                        })
                        .unwrap_or(outputs - 1) as i64
                }
            }))),
        };
        let mut columns: Vec<ArrayRef> = x.into_iter().map(|c| Arc::new(Float64Array::from(c)) as ArrayRef).collect();
        columns.push(target);
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        io.block_on(writer.write(&batch)).with_context(|| format!("writing {}", at.url()))?;
        written += n as u64;
    }
    io.block_on(writer.close()).with_context(|| format!("writing {}", at.url()))?;
    println!("wrote {} ({} rows, {} features, {:?})", at.url(), args.rows, args.features, args.kind);
    Ok(())
}
