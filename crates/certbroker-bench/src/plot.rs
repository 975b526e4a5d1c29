//! A small SVG line chart of latency percentiles (log scale), one line per measured row,
//! written by hand so the benchmark needs no plotting or font libraries.

use std::fmt::Write as _;

use super::report::Report;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const LABELS: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

/// The SVG document for `report`.
pub(super) fn percentiles_svg(report: &Report) -> String {
    let series: Vec<(&str, [Option<f64>; 4])> = report
        .rows
        .iter()
        .map(|r| (r.name.as_str(), [r.p50_us, r.p90_us, r.p99_us, r.p999_us]))
        .collect();
    let values = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .filter(|v| *v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}: latency percentiles (µs, log scale)</text>
"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        escape(&report.scenario)
    );
    if lo > hi {
        s.push_str(r#"<text x="40" y="200">no latency data</text></svg>"#);
        return s;
    }
    // Whole decades around the data.
    let (d_lo, d_hi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - (v.log10() - d_lo) / (d_hi - d_lo));
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / LABELS.len() as f64;
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let mut decade = d_lo;
    while decade <= d_hi {
        let v = 10f64.powf(decade);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y(v) + 4.0,
            v,
            y0 = y(v)
        );
        decade += 1.0;
    }
    for (i, label) in LABELS.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            x(i),
            H - BOTTOM + 20.0
        );
    }
    for (n, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let points: Vec<String> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.filter(|v| *v > 0.0)
                    .map(|v| format!("{:.1},{:.1}", x(i), y(v)))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
        }
        let ly = TOP + 10.0 + 20.0 * n as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            ly + 4.0,
            escape(name),
            lx = W - RIGHT + 16.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, Row};

    #[test]
    fn plots_one_line_per_row_and_skips_missing_percentiles() {
        let mut r = Report::new("l2", "m", true);
        for (name, p90) in [("broker", Some(200.0)), ("redis <b>", None)] {
            r.rows.push(Row {
                name: name.into(),
                requests: 1,
                errors: 0,
                throughput_rps: 1.0,
                p50_us: Some(100.0),
                p90_us: p90,
                p99_us: Some(900.0),
                p999_us: Some(5000.0),
                max_us: None,
            });
        }
        let svg = percentiles_svg(&r);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 7);
        assert!(svg.contains("redis &lt;b&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn empty_report_says_so() {
        let svg = percentiles_svg(&Report::new("cold", "m", true));
        assert!(svg.contains("no latency data"));
    }
}
