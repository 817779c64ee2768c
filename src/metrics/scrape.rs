//! Figures computed at scrape time from snapshots (store summary, cluster
//! view, worker statuses), and the two text formats `/metrics` serves.
//!
//! Snapshot figures are encoded as constant metrics by a one-shot
//! [`Collector`], so a scrape never mutates shared families (two concurrent
//! scrapes cannot double-count, and a forgotten peer simply is not in the
//! next snapshot).
//!
//! Formats: prometheus-client writes OpenMetrics 1.0 text, whose counter
//! families are named without `_total` in `# HELP`/`# TYPE`. The Prometheus
//! text format 0.0.4 (what `promtool check metrics`, older scrapers and
//! humans with curl read) names the family with the suffix; [`to_text_004`]
//! rewrites those lines and drops the OpenMetrics-only `# EOF`/`# UNIT`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;

/// Whole numbers print as integers (`hub_entries 3`, not `3.0`).
fn gauge(v: f64, e: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        ConstGauge::new(v as i64).encode(e)
    } else {
        ConstGauge::new(v).encode(e)
    }
}

/// Label pairs of one sample.
pub type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    /// Histograms owned elsewhere (the committer's), encoded as they are.
    Histogram(Histogram),
}

/// One metric family of a scrape.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Samples,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Samples::Counter(Vec::new()),
        }
    }

    pub fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Samples::Gauge(Vec::new()),
        }
    }

    pub fn histogram(name: &'static str, help: &'static str, h: Histogram) -> Family {
        Family {
            name,
            help,
            samples: Samples::Histogram(h),
        }
    }

    /// Adds a sample; `value` is truncated for counters.
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match &mut self.samples {
            Samples::Counter(s) => s.push((labels, value.max(0.0) as u64)),
            Samples::Gauge(s) => s.push((labels, value)),
            Samples::Histogram(_) => {}
        }
    }

    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }
}

/// The families of one scrape, encoded once.
#[derive(Debug)]
pub struct Snapshot(pub Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            match &f.samples {
                Samples::Counter(s) => {
                    let mut m =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
                    match s.as_slice() {
                        // Unlabelled: no `{}` after the name.
                        [(l, v)] if l.is_empty() => ConstCounter::new(*v).encode(m)?,
                        _ => {
                            for (labels, v) in s {
                                ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
                            }
                        }
                    }
                }
                Samples::Gauge(s) => {
                    let mut m =
                        encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
                    match s.as_slice() {
                        [(l, v)] if l.is_empty() => gauge(*v, m)?,
                        _ => {
                            for (labels, v) in s {
                                gauge(*v, m.encode_family(labels)?)?;
                            }
                        }
                    }
                }
                Samples::Histogram(h) => {
                    let m = encoder.encode_descriptor(f.name, f.help, None, h.metric_type())?;
                    h.encode(m)?;
                }
            }
        }
        Ok(())
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 256);
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlabelled_samples_have_no_braces_and_whole_gauges_no_decimals() {
        let mut r = prometheus_client::registry::Registry::with_prefix("hub");
        r.register_collector(Box::new(Snapshot(vec![
            Family::counter("c", "C").with(&[], 3.0),
            Family::gauge("g", "G").with(&[], 2.0),
            Family::gauge("h", "H").with(&[("peer", "b")], 0.5),
        ])));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let text = to_text_004(&out);
        assert!(text.contains("\nhub_c_total 3\n"), "{text}");
        assert!(text.contains("\nhub_g 2\n"), "{text}");
        assert!(text.contains("\nhub_h{peer=\"b\"} 0.5\n"), "{text}");
    }

    #[test]
    fn counter_families_are_named_with_total_in_text_004() {
        let om = "# HELP hub_x Things.\n# TYPE hub_x counter\nhub_x_total{a=\"b\"} 3\n# HELP hub_g A gauge.\n# TYPE hub_g gauge\nhub_g 1\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP hub_x_total Things.\n# TYPE hub_x_total counter\nhub_x_total{a=\"b\"} 3\n# HELP hub_g A gauge.\n# TYPE hub_g gauge\nhub_g 1\n"
        );
    }
}
