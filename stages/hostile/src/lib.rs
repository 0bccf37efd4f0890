//! A deliberately misbehaving stage for the sandbox tests. `mode` picks the
//! misbehaviour:
//!
//! * `spin`: loops forever (must be stopped by the deadline);
//! * `hog`: allocates without bound (must hit the memory cap);
//! * `snoop`: tries to read a file, the environment and the network, and
//!   reports what it got as a one-row batch (must get nothing);
//! * `panic`: panics (the host must name the stage and the message);
//! * `fail`: returns a stage error.
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
}

struct Hostile(Config);

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
        Ok(Hostile(config))
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
            "fail" => wasmpipe_sdk::fail!("hostile stage failed on purpose"),
            other => Err(wasmpipe_sdk::Error::InvalidConfig(format!("unknown mode {other:?}"))),
        }
    }
}

wasmpipe_sdk::export_transformer!(Hostile);
