//! What the binary prints on stderr: colour or not, logs as text or as
//! JSON lines, and the stage log sink every executor gets.

use std::io::IsTerminal;
use std::sync::Arc;

use crate::progress::{Display, EventWriter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use wasmpipe_runtime::{Level, LogRecord, LogSink};

/// When to colour stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always (overrides `NO_COLOR`).
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour stderr.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// How logs are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: `[stage[task]] message`.
    #[default]
    Text,
    /// One JSON object per line, for log collectors: `time`, `level`,
    /// `stage`, `task` (as `wasmpipe task --task` names it), `partition`
    /// (transform tasks), `message`, `label` (the text format's tag).
    Json,
}

/// Set up wasmpipe's own diagnostics (`WASMPIPE_LOG` filters them): as
/// text, or as JSON lines of the same shape as the stage logs'.
pub fn init_tracing(color: bool, format: LogFormat, display: Arc<Display>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wasmpipe=info"));
    let writer = move || EventWriter::new(display.clone());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(color).without_time().init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLine).init(),
    }
}

/// A tracing event as one JSON object: `time`, `level` (lower case, as
/// stage logs have it), `message` and the event's other fields.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        line.insert("time".into(), now().into());
        line.insert("level".into(), event.metadata().level().as_str().to_ascii_lowercase().into());
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Now, as RFC 3339 with milliseconds (UTC).
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A line for the operator about the run as a whole ("running pipeline
/// ..."): plain text, or a JSON log line.
pub fn announce(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => json_line("info", message),
    }
}

/// One JSON log line at `level`, printed whatever `WASMPIPE_LOG` filters
/// (a run's error must never go missing).
pub fn json_line(level: &str, message: &str) {
    eprintln!("{}", serde_json::json!({ "time": now(), "level": level, "message": message }));
}

/// A log label (`scale[3]`, `fit[fit 2]`, `fit[combine 1:0]`,
/// `fit[merge]`) as stage, task in the task contract's names, and the
/// partition of a transform task.
pub fn parse_label(label: &str) -> (&str, String, Option<u64>) {
    let Some((stage, rest)) = label.split_once('[') else {
        return (label, String::new(), None);
    };
    let inner = rest.strip_suffix(']').unwrap_or(rest);
    if let Ok(partition) = inner.parse::<u64>() {
        return (stage, format!("transform:{partition}"), Some(partition));
    }
    let task = match inner.split_once(' ') {
        Some((kind, what)) => format!("{kind}:{what}"),
        None => inner.to_string(),
    };
    (stage, task, None)
}

/// The sink of stage logs at `min_level` and above, in `format`, printed
/// through `display` (above its progress bars).
pub fn stage_log_sink(min_level: Level, color: bool, format: LogFormat, display: Arc<Display>) -> LogSink {
    Arc::new(move |label: &str, record: &LogRecord| {
        if record.level.rank() < min_level.rank() {
            return;
        }
        match format {
            LogFormat::Json => {
                let (stage, task, partition) = parse_label(label);
                let mut line = serde_json::json!({
                    "time": now(),
                    "level": record.level.name(),
                    "stage": stage,
                    "task": task,
                    "message": record.message,
                    "label": label,
                });
                if let Some(p) = partition {
                    line["partition"] = p.into();
                }
                display.println(&line.to_string());
            }
            LogFormat::Text => {
                let tag = match record.level {
                    Level::Error => "error ",
                    Level::Warn => "warn ",
                    _ => "",
                };
                if color {
                    display.println(&format!("\x1b[2m[{label}]\x1b[0m {tag}{}", record.message));
                } else {
                    display.println(&format!("[{label}] {tag}{}", record.message));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_label;

    #[test]
    fn labels_name_the_stage_and_the_task_as_the_contract_does() {
        assert_eq!(parse_label("scale[3]"), ("scale", "transform:3".to_string(), Some(3)));
        assert_eq!(parse_label("fit[fit 2]"), ("fit", "fit:2".to_string(), None));
        assert_eq!(parse_label("fit[combine 1:0]"), ("fit", "combine:1:0".to_string(), None));
        assert_eq!(parse_label("fit[merge]"), ("fit", "merge".to_string(), None));
        assert_eq!(parse_label("plain"), ("plain", String::new(), None));
    }
}
