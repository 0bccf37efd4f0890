//! The live display of a run. On a terminal, a bar per running stage
//! (indicatif): the round it is in (`fit pass 3`, `transform`), tasks done
//! of the round and running, rows/s and bytes/s read, elapsed time and an
//! estimate, with the logs scrolling above it. Elsewhere (a pipe, a file,
//! CI), a plain status line every `WASMPIPE_PROGRESS_INTERVAL_S` seconds
//! (default 10), so a short run prints none.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wasmpipe_executor::Progress;

/// Where the run's progress and logs go.
pub struct Display {
    /// The bars, when drawn live on a terminal.
    live: Option<MultiProgress>,
    /// Whether status lines are printed (not with `-q`, not in JSON).
    lines: bool,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    bar: Option<ProgressBar>,
    stage: String,
    what: String,
    tasks: usize,
    done: usize,
    running: usize,
    rows: u64,
    bytes: u64,
    stage_started: Instant,
    last_line: Instant,
}

impl Display {
    /// A display: drawn live when `live` (a terminal), else status lines
    /// when `lines`.
    pub fn new(live: bool, lines: bool) -> Arc<Display> {
        let interval = std::env::var("WASMPIPE_PROGRESS_INTERVAL_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        Arc::new(Display {
            live: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10))),
            lines,
            interval,
            state: Mutex::new(State {
                bar: None,
                stage: String::new(),
                what: String::new(),
                tasks: 0,
                done: 0,
                running: 0,
                rows: 0,
                bytes: 0,
                stage_started: Instant::now(),
                last_line: Instant::now(),
            }),
        })
    }

    /// A display that only prints lines as they come (no progress).
    pub fn plain() -> Arc<Display> {
        Display::new(false, false)
    }

    /// Take the bars off the screen (a run that failed leaves none).
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(multi) = &self.live {
            let _ = multi.clear();
        }
    }

    /// Print `line` on stderr, above the bars when they are drawn.
    pub fn println(&self, line: &str) {
        match &self.live {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// Take in what the run is doing.
    pub fn on(&self, event: &Progress) {
        if self.live.is_none() && !self.lines {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Progress::Stage { stage, .. } => {
                if s.stage.is_empty() {
                    // Lines count from the first stage, not from building
                    // and compiling the stages before it.
                    s.last_line = Instant::now();
                }
                s.stage = stage.clone();
                (s.what, s.tasks, s.done, s.running, s.rows, s.bytes) = ("starting".into(), 0, 0, 0, 0, 0);
                s.stage_started = Instant::now();
                if let Some(multi) = &self.live {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>14.bold} [{bar:24.cyan/blue}] {pos}/{len} {msg} {elapsed} (eta {eta})",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(stage.clone());
                    bar.enable_steady_tick(Duration::from_millis(200));
                    s.bar = Some(bar);
                }
            }
            Progress::Round { what, tasks, .. } => {
                s.what = what.clone();
                (s.tasks, s.done) = (*tasks, 0);
                if let Some(bar) = &s.bar {
                    bar.set_length(*tasks as u64);
                    bar.set_position(0);
                    bar.reset_eta();
                }
            }
            Progress::TaskStarted { .. } => s.running += 1,
            Progress::TaskDone { rows, bytes, .. } => {
                s.running = s.running.saturating_sub(1);
                s.done += 1;
                s.rows += rows;
                s.bytes += bytes;
                if let Some(bar) = &s.bar {
                    bar.inc(1);
                }
                if self.live.is_none() && s.last_line.elapsed() >= self.interval {
                    s.last_line = Instant::now();
                    eprintln!("progress: {} {}: {}/{} tasks, {}", s.stage, s.what, s.done, s.tasks, rates(&s));
                }
            }
            Progress::StageDone { .. } => {
                if let Some(bar) = s.bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
        if let Some(bar) = &s.bar {
            bar.set_message(format!("tasks · {} · {} running · {}", s.what, s.running, rates(&s)));
        }
    }
}

/// Rows and bytes read per second since the stage began.
fn rates(s: &State) -> String {
    let secs = s.stage_started.elapsed().as_secs_f64().max(1e-3);
    format!("{} rows/s, {}/s", human(s.rows as f64 / secs), crate::human_bytes((s.bytes as f64 / secs) as u64))
}

/// `1.2M`, `35.0k`, `12`.
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// A `tracing` writer that prints each event through the display, so that
/// wasmpipe's own messages scroll above the bars too.
pub struct EventWriter {
    display: Arc<Display>,
    buf: Vec<u8>,
}

impl EventWriter {
    /// A writer for one event.
    pub fn new(display: Arc<Display>) -> Self {
        EventWriter { display, buf: Vec::new() }
    }
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            self.display.println(text);
        }
    }
}
