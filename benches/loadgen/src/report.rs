//! Results as records: one tab-separated line per (scenario, broker) run,
//! appended to a file, and the Markdown tables made from such a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::Path;

/// One scenario run against one broker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Scenario name, e.g. `fan-in q1 64B`.
    pub scenario: String,
    /// Broker label, e.g. `roost`.
    pub broker: String,
    /// The headline figure (messages/s, connections/s, KiB/connection).
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Maximum, microseconds.
    pub max_us: f64,
    /// Lost messages (or failed connections).
    pub lost: u64,
    /// Duplicated messages.
    pub dup: u64,
    /// Broker CPU seconds during the run (NaN when unknown).
    pub cpu_s: f64,
    /// Broker peak RSS during the run, KiB (0 when unknown).
    pub peak_rss_kb: u64,
    /// Anything else worth a note.
    pub note: String,
    /// CPU seconds of each watched process (`--pid`, in order); their sum
    /// is `cpu_s`. Empty when unknown.
    pub cpu_each: Vec<f64>,
    /// What `value` counts, in all: distinct deliveries, connections made
    /// (0 when unknown). With `cpu_each`, the CPU each process spent per
    /// delivered message.
    pub count: u64,
}

fn clean(s: &str) -> String {
    s.replace(['\t', '\n'], " ")
}

impl Record {
    /// The record as one tab-separated line (no newline). `cpu_each` and
    /// `count` come last, after the note, so lines written before they
    /// existed still read.
    pub fn to_tsv(&self) -> String {
        let cpu_each: Vec<String> = self.cpu_each.iter().map(|c| format!("{c:.3}")).collect();
        format!(
            "{}\t{}\t{:.3}\t{}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\t{:.3}\t{}\t{}\t{}\t{}",
            clean(&self.scenario),
            clean(&self.broker),
            self.value,
            clean(&self.unit),
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.lost,
            self.dup,
            self.cpu_s,
            self.peak_rss_kb,
            clean(&self.note),
            cpu_each.join(","),
            self.count
        )
    }

    /// Parses a line written by [`to_tsv`](Self::to_tsv).
    pub fn from_tsv(line: &str) -> Option<Record> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 11 {
            return None;
        }
        Some(Record {
            scenario: f[0].into(),
            broker: f[1].into(),
            value: f[2].parse().ok()?,
            unit: f[3].into(),
            p50_us: f[4].parse().ok()?,
            p99_us: f[5].parse().ok()?,
            max_us: f[6].parse().ok()?,
            lost: f[7].parse().ok()?,
            dup: f[8].parse().ok()?,
            cpu_s: f[9].parse().ok()?,
            peak_rss_kb: f[10].parse().ok()?,
            note: f.get(11).copied().unwrap_or("").into(),
            cpu_each: match f.get(12).copied().unwrap_or("") {
                "" => Vec::new(),
                list => list
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?,
            },
            count: match f.get(13) {
                Some(c) => c.parse().ok()?,
                None => 0,
            },
        })
    }

    /// Appends the record to `path`.
    pub fn append_to(&self, path: &Path) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", self.to_tsv())
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ms(us: f64) -> String {
    if us <= 0.0 {
        "-".into()
    } else {
        format!("{:.2}", us / 1000.0)
    }
}

/// "Lower is better" units, whose ratio reads the other way.
fn lower_is_better(unit: &str) -> bool {
    unit.starts_with("KiB")
}

/// The Markdown tables for `records`: a summary with one row per scenario,
/// one column per broker (first-seen order) and the ratio of the first
/// broker to each other; then one detailed row per run.
pub fn markdown(records: &[Record]) -> String {
    let mut brokers: Vec<&str> = Vec::new();
    let mut scenarios: Vec<(&str, &str)> = Vec::new();
    let mut by_key: BTreeMap<(&str, &str), &Record> = BTreeMap::new();
    for r in records {
        if !brokers.contains(&r.broker.as_str()) {
            brokers.push(&r.broker);
        }
        if !scenarios.iter().any(|(s, _)| *s == r.scenario) {
            scenarios.push((&r.scenario, &r.unit));
        }
        by_key.insert((&r.scenario, &r.broker), r);
    }
    let mut out = String::new();
    let first = brokers.first().copied().unwrap_or("roost");
    out.push_str("| scenario | unit |");
    for b in &brokers {
        let _ = write!(out, " {b} |");
    }
    for b in brokers.iter().skip(1) {
        let _ = write!(out, " {first}/{b} |");
    }
    out.push_str("\n|---|---|");
    for _ in 0..(brokers.len() * 2).saturating_sub(1) {
        out.push_str("---:|");
    }
    out.push('\n');
    for (s, unit) in &scenarios {
        let _ = write!(out, "| {s} | {unit} |");
        for b in &brokers {
            match by_key.get(&(*s, *b)) {
                Some(r) => {
                    let _ = write!(out, " {} |", fmt_value(r.value));
                }
                None => out.push_str(" - |"),
            }
        }
        let mine = by_key.get(&(*s, first)).map(|r| r.value);
        for b in brokers.iter().skip(1) {
            let theirs = by_key.get(&(*s, *b)).map(|r| r.value);
            match (mine, theirs) {
                (Some(m), Some(t)) if m > 0.0 && t > 0.0 => {
                    let ratio = m / t;
                    let hint = if lower_is_better(unit) {
                        " (lower is better)"
                    } else {
                        ""
                    };
                    let _ = write!(out, " {ratio:.2}{hint} |");
                }
                _ => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }

    out.push_str(
        "\n| scenario | broker | value | unit | p50 ms | p99 ms | max ms | lost | dup | CPU s | peak RSS MiB | note |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (s, _) in &scenarios {
        for b in &brokers {
            if let Some(r) = by_key.get(&(*s, *b)) {
                let cpu = if r.cpu_s.is_finite() {
                    format!("{:.2}", r.cpu_s)
                } else {
                    "-".into()
                };
                let rss = if r.peak_rss_kb > 0 {
                    format!("{:.1}", r.peak_rss_kb as f64 / 1024.0)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "| {s} | {b} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {rss} | {} |",
                    fmt_value(r.value),
                    r.unit,
                    fmt_ms(r.p50_us),
                    fmt_ms(r.p99_us),
                    fmt_ms(r.max_us),
                    r.lost,
                    r.dup,
                    r.note
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(s: &str, b: &str, v: f64) -> Record {
        Record {
            scenario: s.into(),
            broker: b.into(),
            value: v,
            unit: "msg/s".into(),
            cpu_s: 1.5,
            peak_rss_kb: 2048,
            ..Default::default()
        }
    }

    #[test]
    fn tsv_round_trip() {
        let mut r = rec("fan-in q1 64B", "roost", 1234.5);
        r.note = "a\tb".into();
        let back = Record::from_tsv(&r.to_tsv()).unwrap();
        assert_eq!(back.scenario, r.scenario);
        assert_eq!(back.value, 1234.5);
        assert_eq!(back.note, "a b");
        assert!(back.cpu_each.is_empty());
        assert_eq!(back.count, 0);
    }

    #[test]
    fn tsv_round_trip_per_process_cpu() {
        let mut r = rec("pairs q1 64B", "roost-cluster", 1000.0);
        r.cpu_each = vec![1.25, 0.5, 2.0];
        r.count = 40_000;
        let back = Record::from_tsv(&r.to_tsv()).unwrap();
        assert_eq!(back.cpu_each, vec![1.25, 0.5, 2.0]);
        assert_eq!(back.count, 40_000);
    }

    #[test]
    fn reads_lines_from_before_per_process_cpu() {
        let old = "fan-in q0 64B\troost\t1287168.000\tmsg/s\t72350.0\t142610.0\t143190.0\t0\t0\t0.170\t12185\t200000/200000 delivered";
        let r = Record::from_tsv(old).unwrap();
        assert_eq!(r.value, 1287168.0);
        assert_eq!(r.note, "200000/200000 delivered");
        assert!(r.cpu_each.is_empty());
        assert_eq!(r.count, 0);
    }

    #[test]
    fn table_has_ratios() {
        let t = markdown(&[
            rec("a", "roost", 200.0),
            rec("a", "mosquitto", 100.0),
            rec("b", "roost", 50.0),
        ]);
        assert!(t.contains("| a | msg/s | 200 | 100 | 2.00 |"), "{t}");
        assert!(t.contains("| b | msg/s | 50.00 | - | - |"), "{t}");
    }
}
