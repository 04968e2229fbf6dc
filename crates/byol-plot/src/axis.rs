//! Axis ranges and tick marks, as pure functions of the data, so that what
//! a chart shows can be tested without drawing it.

/// `[lo, hi]` of the finite `values` widened by 5% on each side (or around
/// a single value), so that lines do not sit on the frame; `None` when no
/// value is finite.
pub(crate) fn padded(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = finite_range(values)?;
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.05 * lo.abs().max(1e-12)
    };
    Some((lo - pad, hi + pad))
}

/// Smallest and largest finite value.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    (lo <= hi).then_some((lo, hi))
}

/// `[0, hi]` for values that are never negative and start from 0 (a
/// learning rate, warmed up from 0 and decayed towards it): the finite
/// `values`' largest widened by 5%.
pub(crate) fn from_zero(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = finite_range(values)?;
    let top = hi.max(0.0);
    if top == 0.0 {
        return padded([lo, hi].into_iter());
    }
    Some((lo.min(0.0), 1.05 * top))
}

/// The range of an accuracy axis, as fractions: the finite `values` with a
/// margin of a tenth of their spread (at least two points), inside
/// `[0, 1]`: an accuracy axis never runs past 100%.
pub(crate) fn accuracy_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = finite_range(values)?;
    let margin = (0.1 * (hi - lo)).max(0.02);
    Some(((lo - margin).max(0.0), (hi + margin).min(1.0)))
}

/// The range of an axis of whole numbers (epochs, steps): the finite
/// `values` with half a unit, or 5% of the spread, on each side.
pub(crate) fn integer_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = finite_range(values)?;
    let pad = (0.05 * (hi - lo)).max(0.5);
    Some((lo - pad, hi + pad))
}

/// A round step near `span / max_ticks`: 1, 2, 2.5 or 5 times a power of
/// ten (only 1, 2 and 5 when `whole`, and at least 1).
fn nice_step(span: f64, max_ticks: usize, whole: bool) -> f64 {
    let raw = span / max_ticks.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    let mantissas: &[f64] = if whole {
        &[1.0, 2.0, 5.0, 10.0]
    } else {
        &[1.0, 2.0, 2.5, 5.0, 10.0]
    };
    let step = mantissas
        .iter()
        .map(|m| m * power)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * power);
    if whole { step.max(1.0).round() } else { step }
}

/// Multiples of `step` inside `[lo, hi]`.
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// At most about `max_ticks` round tick values inside `[lo, hi]`.
pub(crate) fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    multiples(lo, hi, nice_step(hi - lo, max_ticks, false))
}

/// At most about `max_ticks` whole-number tick values inside `[lo, hi]`
/// (every 1, 2, 5, 10, ... units): an epoch axis shows no "1.5".
pub(crate) fn integer_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    multiples(lo, hi, nice_step(hi - lo, max_ticks, true))
}

/// Formats tick values spaced `step` apart with just the digits that tell
/// them apart (a learning rate of 0.0002 reads as such); steps below
/// 1e-5 in scientific notation.
pub(crate) fn tick_label(value: f64, step: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    if step > 0.0 && step < 1e-5 {
        let digits = (value.abs().log10().floor() - step.log10().floor()).clamp(0.0, 4.0);
        return format!("{value:.*e}", digits as usize);
    }
    let mut decimals = if step > 0.0 {
        (-step.log10()).ceil().max(0.0) as usize
    } else {
        0
    };
    // 2.5 × 10^k needs one more digit than 10^k
    while decimals < 6
        && format!("{step:.decimals$}")
            .parse::<f64>()
            .is_ok_and(|r| (r - step).abs() > 1e-9 * step)
    {
        decimals += 1;
    }
    format!("{value:.decimals$}")
}

/// The spacing of sorted `ticks` (1 when there are fewer than two).
pub(crate) fn tick_step(ticks: &[f64]) -> f64 {
    match ticks {
        [a, b, ..] => b - a,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_range_fits_the_data_and_never_exceeds_one() {
        let (lo, hi) = accuracy_range([0.72, 0.769, 0.75].into_iter()).expect("range");
        assert!(lo < 0.72 && lo > 0.65, "a small margin below: {lo}");
        assert!(hi > 0.769 && hi < 0.82, "a small margin above: {hi}");

        let (lo, hi) = accuracy_range([0.97, 0.995, 1.0].into_iter()).expect("range");
        assert!(hi <= 1.0, "never past 100%: {hi}");
        assert!(lo < 0.97 && lo > 0.9, "{lo}");

        let (lo, hi) = accuracy_range([0.0, 0.01].into_iter()).expect("range");
        assert!(lo >= 0.0 && hi > 0.01, "{lo} {hi}");
        assert_eq!(accuracy_range([f64::NAN].into_iter()), None);
        // a single value still gets an axis
        let (lo, hi) = accuracy_range([0.5].into_iter()).expect("range");
        assert!(lo < 0.5 && hi > 0.5);
    }

    #[test]
    fn accuracy_range_holds_every_value_over_random_inputs() {
        // a fixed xorshift: many shapes of data, reproducibly
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..1000 {
            let values: Vec<f64> = (0..1 + (next() * 10.0) as usize).map(|_| next()).collect();
            let (lo, hi) = accuracy_range(values.iter().copied()).expect("range");
            assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo < hi);
            assert!(values.iter().all(|v| (lo..=hi).contains(v)));
        }
    }

    #[test]
    fn epoch_ticks_are_whole_numbers_inside_the_range() {
        for (lo, hi) in [
            (0.5, 2.5),
            (0.5, 1.5),
            (-0.5, 8.5),
            (0.0, 40.0),
            (-4.0, 104.0),
        ] {
            let ticks = integer_ticks(lo, hi, 8);
            assert!(!ticks.is_empty(), "{lo}..{hi}");
            assert!(ticks.len() <= 11, "{ticks:?}");
            for t in &ticks {
                assert_eq!(t.fract(), 0.0, "{t} in {ticks:?}");
                assert!((lo..=hi).contains(t));
            }
        }
        assert_eq!(integer_ticks(0.5, 2.5, 8), [1.0, 2.0]);
        assert_eq!(integer_ticks(0.5, 1.5, 8), [1.0]);
    }

    #[test]
    fn a_constant_learning_rate_is_drawn_against_zero() {
        let (lo, hi) = from_zero([1e-3, 1e-3].into_iter()).expect("range");
        assert_eq!(lo, 0.0);
        assert!((hi - 1.05e-3).abs() < 1e-12, "{hi}");
        let (lo, hi) = from_zero([0.0, 0.0].into_iter()).expect("range");
        assert!(lo < 0.0 && hi > 0.0);
    }

    #[test]
    fn integer_range_puts_half_an_epoch_around_the_points() {
        assert_eq!(integer_range([1.0, 2.0].into_iter()), Some((0.5, 2.5)));
    }

    #[test]
    fn tick_labels_have_the_digits_the_step_needs() {
        assert_eq!(tick_label(70.0, 5.0), "70");
        assert_eq!(tick_label(72.5, 2.5), "72.5");
        assert_eq!(tick_label(0.06, 0.005), "0.060");
        assert_eq!(tick_label(0.995, 0.0025), "0.9950");
        assert_eq!(tick_label(0.0004, 0.0002), "0.0004");
        assert_eq!(tick_label(0.001, 0.0002), "0.0010");
        assert_eq!(tick_label(0.000_004, 0.000_002), "4e-6");
        assert_eq!(tick_label(0.0, 0.0002), "0");
        let ticks = nice_ticks(0.9895, 1.0005, 6);
        assert!(ticks.len() >= 3, "{ticks:?}");
        let step = tick_step(&ticks);
        let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t, step)).collect();
        let mut unique = labels.clone();
        unique.dedup();
        assert_eq!(unique, labels, "labels tell the ticks apart");
    }
}
