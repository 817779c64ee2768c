//! The eight sensor kinds as pure generators.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum SensorKind {
    /// Uniform in `[min, max]`.
    Numeric {
        min: f64,
        max: f64,
        unit: Option<String>,
    },
    /// `true` with probability `p_true`.
    Boolean { p_true: f64 },
    /// `amplitude * sin(2π * frequency * t)`, `t` in seconds.
    Wave { amplitude: f64, frequency: f64 },
    /// `base` plus Gaussian noise with standard deviation `noise`.
    Noise { base: f64, noise: f64 },
    /// `baseline`, or `baseline + spike_height` with probability `p_spike`.
    Spike {
        baseline: f64,
        spike_height: f64,
        p_spike: f64,
    },
    /// `start + slope * t + N(0, noise)`, `t` in seconds since the sensor started.
    Trend { start: f64, slope: f64, noise: f64 },
    /// One of `values`, uniformly.
    Categorical { values: Vec<String> },
    /// `step * n` for the n-th reading (n from 1).
    Incremental { step: f64 },
}

impl SensorKind {
    pub fn name(&self) -> &'static str {
        match self {
            SensorKind::Numeric { .. } => "numeric",
            SensorKind::Boolean { .. } => "boolean",
            SensorKind::Wave { .. } => "wave",
            SensorKind::Noise { .. } => "noise",
            SensorKind::Spike { .. } => "spike",
            SensorKind::Trend { .. } => "trend",
            SensorKind::Categorical { .. } => "categorical",
            SensorKind::Incremental { .. } => "incremental",
        }
    }

    pub fn unit(&self) -> Option<&str> {
        match self {
            SensorKind::Numeric { unit, .. } => unit.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SensorSpec {
    pub name: String,
    pub period_ms: u64,
    pub kind: SensorKind,
}

/// One generated value.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub value: Value,
}

fn gaussian(rng: &mut StdRng, sd: f64) -> f64 {
    // `Normal::new` fails only for a negative or non-finite sd, which config
    // validation rules out; fall back to no noise rather than panic.
    Normal::new(0.0, sd).map_or(0.0, |n| n.sample(rng))
}

fn number(x: f64) -> Value {
    // Round to 4 decimals: readings are for people, and shorter JSON.
    let r = (x * 10_000.0).round() / 10_000.0;
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

/// The reading of `kind` at `t_secs` since the sensor started, as its `n`-th
/// reading (from 1).
pub fn generate(kind: &SensorKind, rng: &mut StdRng, t_secs: f64, n: u64) -> Reading {
    let value = match kind {
        SensorKind::Numeric { min, max, .. } => number(if max > min {
            rng.gen_range(*min..=*max)
        } else {
            *min
        }),
        SensorKind::Boolean { p_true } => Value::Bool(rng.gen_bool(p_true.clamp(0.0, 1.0))),
        SensorKind::Wave {
            amplitude,
            frequency,
        } => number(amplitude * (2.0 * std::f64::consts::PI * frequency * t_secs).sin()),
        SensorKind::Noise { base, noise } => number(base + gaussian(rng, *noise)),
        SensorKind::Spike {
            baseline,
            spike_height,
            p_spike,
        } => {
            let spike = rng.gen_bool(p_spike.clamp(0.0, 1.0));
            number(if spike {
                baseline + spike_height
            } else {
                *baseline
            })
        }
        SensorKind::Trend {
            start,
            slope,
            noise,
        } => number(start + slope * t_secs + gaussian(rng, *noise)),
        SensorKind::Categorical { values } => {
            if values.is_empty() {
                Value::Null
            } else {
                Value::String(values[rng.gen_range(0..values.len())].clone())
            }
        }
        SensorKind::Incremental { step } => number(step * n as f64),
    };
    Reading { value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn numeric_stays_within_bounds() {
        let k = SensorKind::Numeric {
            min: 1.0,
            max: 2.0,
            unit: None,
        };
        let mut r = rng();
        for i in 0..500 {
            let v = generate(&k, &mut r, i as f64, i).value.as_f64().unwrap();
            assert!((1.0..=2.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn boolean_and_spike_follow_their_probabilities_at_the_extremes() {
        let mut r = rng();
        assert_eq!(
            generate(&SensorKind::Boolean { p_true: 1.0 }, &mut r, 0.0, 1).value,
            Value::Bool(true)
        );
        assert_eq!(
            generate(&SensorKind::Boolean { p_true: 0.0 }, &mut r, 0.0, 1).value,
            Value::Bool(false)
        );
        let s = SensorKind::Spike {
            baseline: 1.0,
            spike_height: 5.0,
            p_spike: 1.0,
        };
        assert_eq!(generate(&s, &mut r, 0.0, 1).value.as_f64(), Some(6.0));
        let s = SensorKind::Spike {
            baseline: 1.0,
            spike_height: 5.0,
            p_spike: 0.0,
        };
        assert_eq!(generate(&s, &mut r, 0.0, 1).value.as_f64(), Some(1.0));
    }

    #[test]
    fn wave_trend_and_incremental_are_functions_of_time_and_count() {
        let mut r = rng();
        let w = SensorKind::Wave {
            amplitude: 2.0,
            frequency: 0.25,
        };
        assert_eq!(generate(&w, &mut r, 1.0, 1).value.as_f64(), Some(2.0));
        let t = SensorKind::Trend {
            start: 10.0,
            slope: 0.5,
            noise: 0.0,
        };
        assert_eq!(generate(&t, &mut r, 4.0, 1).value.as_f64(), Some(12.0));
        let i = SensorKind::Incremental { step: 1.5 };
        assert_eq!(generate(&i, &mut r, 0.0, 3).value.as_f64(), Some(4.5));
    }

    #[test]
    fn noise_centres_on_base_and_categorical_picks_from_values() {
        let mut r = rng();
        let n = SensorKind::Noise {
            base: 100.0,
            noise: 1.0,
        };
        let mean: f64 = (0..2000)
            .map(|i| generate(&n, &mut r, 0.0, i).value.as_f64().unwrap())
            .sum::<f64>()
            / 2000.0;
        assert!((mean - 100.0).abs() < 0.2, "{mean}");
        let c = SensorKind::Categorical {
            values: vec!["a".into(), "b".into()],
        };
        for i in 0..50 {
            let v = generate(&c, &mut r, 0.0, i).value;
            assert!(v == "a" || v == "b");
        }
    }

    #[test]
    fn same_seed_same_readings() {
        let k = SensorKind::Noise {
            base: 0.0,
            noise: 3.0,
        };
        let a: Vec<_> = (0..10)
            .map({
                let mut r = rng();
                move |i| generate(&k, &mut r, 0.0, i)
            })
            .collect();
        let k = SensorKind::Noise {
            base: 0.0,
            noise: 3.0,
        };
        let b: Vec<_> = (0..10)
            .map({
                let mut r = rng();
                move |i| generate(&k, &mut r, 0.0, i)
            })
            .collect();
        assert_eq!(a, b);
    }
}
