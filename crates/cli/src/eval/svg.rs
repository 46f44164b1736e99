//! The `--plot` figure, as hand-written SVG (no plotting dependency).
//!
//! Top: accuracy (%) against prompt length, log₂-scaled x, one polyline with dots per
//! attention series. Below: one heatmap per series, lengths across and depths down (depth 0 at
//! the top), each cell coloured from red (0%) through yellow to green (100%) and labelled
//! correct/trials; a cell with no trials is grey.
//!
//! Every element is either self-closing or closed, and all text is XML-escaped.

use std::fmt::Write as _;

use super::options::length_label;
use super::report::Report;

const WIDTH: f64 = 760.0;
/// The line chart's plotting area.
const CHART_LEFT: f64 = 70.0;
const CHART_RIGHT: f64 = 560.0;
const CHART_TOP: f64 = 60.0;
const CHART_BOTTOM: f64 = 300.0;
/// Where the heatmaps start, and their cells' largest size.
const HEATMAPS_TOP: f64 = 360.0;
const CELL_MAX_WIDTH: f64 = 64.0;
const CELL_HEIGHT: f64 = 22.0;
/// Space for a heatmap's title above it and its length labels below it.
const HEATMAP_TITLE: f64 = 28.0;
const HEATMAP_FOOT: f64 = 44.0;

/// Line colours, in series order (repeating after the last).
const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

/// The whole figure.
pub fn plot(report: &Report) -> String {
    let series = report.series();
    let lengths = report.lengths();
    let depths = report.depths();
    let heatmap_height = HEATMAP_TITLE + CELL_HEIGHT * depths.len() as f64 + HEATMAP_FOOT;
    let height = HEATMAPS_TOP + heatmap_height * series.len() as f64 + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#);
    text(&mut svg, WIDTH / 2.0, 24.0, "middle", 15.0, &report.title());
    line_chart(&mut svg, report, &series, &lengths);
    for (i, label) in series.iter().enumerate() {
        heatmap(&mut svg, report, label, &lengths, &depths, HEATMAPS_TOP + heatmap_height * i as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

/// x of a length on the log₂ axis spanning the shortest to the longest length.
fn length_x(length: usize, shortest: usize, longest: usize) -> f64 {
    if longest <= shortest {
        return (CHART_LEFT + CHART_RIGHT) / 2.0;
    }
    let span = (longest as f64).log2() - (shortest as f64).log2();
    let pad = 20.0;
    CHART_LEFT
        + pad
        + ((length as f64).log2() - (shortest as f64).log2()) / span * (CHART_RIGHT - CHART_LEFT - 2.0 * pad)
}

fn accuracy_y(accuracy: f64) -> f64 {
    CHART_BOTTOM - accuracy.clamp(0.0, 1.0) * (CHART_BOTTOM - CHART_TOP)
}

fn line_chart(svg: &mut String, report: &Report, series: &[String], lengths: &[usize]) {
    let (shortest, longest) = (lengths.first().copied().unwrap_or(1), lengths.last().copied().unwrap_or(1));
    for percent in [0, 25, 50, 75, 100] {
        let y = accuracy_y(percent as f64 / 100.0);
        let _ = writeln!(svg, r##"<line x1="{CHART_LEFT}" y1="{y}" x2="{CHART_RIGHT}" y2="{y}" stroke="#dddddd"/>"##);
        text(svg, CHART_LEFT - 8.0, y + 4.0, "end", 12.0, &format!("{percent}%"));
    }
    for &length in lengths {
        let x = length_x(length, shortest, longest);
        let _ =
            writeln!(svg, r##"<line x1="{x:.1}" y1="{CHART_TOP}" x2="{x:.1}" y2="{CHART_BOTTOM}" stroke="#eeeeee"/>"##);
        text(svg, x, CHART_BOTTOM + 18.0, "middle", 12.0, &length_label(length));
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{CHART_LEFT}" y="{CHART_TOP}" width="{}" height="{}" fill="none" stroke="#888888"/>"##,
        CHART_RIGHT - CHART_LEFT,
        CHART_BOTTOM - CHART_TOP
    );
    text(
        svg,
        (CHART_LEFT + CHART_RIGHT) / 2.0,
        CHART_BOTTOM + 38.0,
        "middle",
        12.0,
        "prompt length (tokens, log scale)",
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{}" text-anchor="middle" font-size="12" transform="rotate(-90 18 {})">accuracy</text>"#,
        (CHART_TOP + CHART_BOTTOM) / 2.0,
        (CHART_TOP + CHART_BOTTOM) / 2.0
    );
    for (i, label) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut points: Vec<(f64, f64, String)> = report
            .results
            .iter()
            .filter(|r| &r.series_label() == label)
            .map(|r| {
                let tip = format!("{label}, {}: {}/{}", length_label(r.length), r.correct, r.trials);
                (length_x(r.length, shortest, longest), accuracy_y(r.accuracy), tip)
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let coords: Vec<String> = points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            coords.join(" ")
        );
        for (x, y, tip) in &points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{colour}"><title>{}</title></circle>"#,
                escape(tip)
            );
        }
        let legend_y = CHART_TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="3"/>"#,
            CHART_RIGHT + 20.0,
            CHART_RIGHT + 44.0
        );
        text(svg, CHART_RIGHT + 50.0, legend_y + 4.0, "start", 12.0, label);
    }
}

fn heatmap(svg: &mut String, report: &Report, label: &str, lengths: &[usize], depths: &[f64], top: f64) {
    let cell_width = (CHART_RIGHT - CHART_LEFT) / lengths.len().max(1) as f64;
    let cell_width = cell_width.min(CELL_MAX_WIDTH);
    text(svg, CHART_LEFT, top + 16.0, "start", 13.0, &format!("accuracy by length and depth: {label}"));
    let grid_top = top + HEATMAP_TITLE;
    text(svg, CHART_LEFT - 8.0, grid_top - 4.0, "end", 11.0, "depth");
    for (row, &depth) in depths.iter().enumerate() {
        let y = grid_top + CELL_HEIGHT * row as f64;
        text(svg, CHART_LEFT - 8.0, y + CELL_HEIGHT / 2.0 + 4.0, "end", 11.0, &format!("{depth:.2}"));
        for (col, &length) in lengths.iter().enumerate() {
            let x = CHART_LEFT + cell_width * col as f64;
            let (correct, total) = report
                .results
                .iter()
                .filter(|r| r.length == length && r.series_label() == label)
                .map(|r| r.at_depth(depth))
                .fold((0, 0), |(c, t), (c2, t2)| (c + c2, t + t2));
            let fill = if total == 0 { "#cccccc".to_string() } else { heat_colour(correct as f64 / total as f64) };
            let _ = writeln!(
                svg,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cell_width:.1}" height="{CELL_HEIGHT}" fill="{fill}" stroke="#ffffff"/>"##
            );
            if total > 0 {
                text(
                    svg,
                    x + cell_width / 2.0,
                    y + CELL_HEIGHT / 2.0 + 4.0,
                    "middle",
                    11.0,
                    &format!("{correct}/{total}"),
                );
            }
        }
    }
    let foot = grid_top + CELL_HEIGHT * depths.len() as f64;
    for (col, &length) in lengths.iter().enumerate() {
        let x = CHART_LEFT + cell_width * (col as f64 + 0.5);
        text(svg, x, foot + 16.0, "middle", 11.0, &length_label(length));
    }
}

/// Red (0) → yellow (0.5) → green (1), as `#rrggbb`.
fn heat_colour(accuracy: f64) -> String {
    const RED: [f64; 3] = [215.0, 48.0, 39.0];
    const YELLOW: [f64; 3] = [254.0, 224.0, 139.0];
    const GREEN: [f64; 3] = [26.0, 152.0, 80.0];
    let a = accuracy.clamp(0.0, 1.0);
    let (from, to, t) = if a < 0.5 { (RED, YELLOW, a * 2.0) } else { (YELLOW, GREEN, (a - 0.5) * 2.0) };
    let channel = |i: usize| (from[i] + (to[i] - from[i]) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", channel(0), channel(1), channel(2))
}

fn text(svg: &mut String, x: f64, y: f64, anchor: &str, size: f64, content: &str) {
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
        escape(content)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionKind;
    use crate::eval::report::tests::{report, result};

    /// Checks that every tag is closed in order; returns the element names seen.
    fn balanced_elements(svg: &str) -> Result<Vec<String>, String> {
        let mut open: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').ok_or("unterminated tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(top) if top == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else {
                let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                if name.is_empty() {
                    return Err(format!("bad tag <{tag}>"));
                }
                seen.push(name.clone());
                if !tag.ends_with('/') {
                    open.push(name);
                }
            }
        }
        if !open.is_empty() {
            return Err(format!("never closed: {open:?}"));
        }
        if rest.contains('>') {
            return Err("stray >".into());
        }
        Ok(seen)
    }

    fn polyline_points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let points = l.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
                points
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn figure_is_balanced_with_one_polyline_per_series() {
        let mut r = report(vec![
            result(2048, AttentionKind::Dense, None, &[true, true, false]),
            result(8192, AttentionKind::Dense, None, &[true, false, false]),
            result(2048, AttentionKind::Hip, Some("default"), &[true, true, true]),
            result(8192, AttentionKind::Hip, Some("default"), &[true, true, false]),
            result(8192, AttentionKind::Hip, Some("fast"), &[false, false, false]),
        ]);
        r.model = "a<b>&\"c\".gguf".into();
        let svg = plot(&r);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let elements = balanced_elements(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(elements.iter().filter(|e| *e == "polyline").count(), 3);
        assert_eq!(elements.iter().filter(|e| *e == "svg").count(), 1);
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&quot;.gguf"), "the title is escaped");
        for label in ["dense", "hip (default)", "hip (fast)"] {
            assert!(svg.contains(&format!("accuracy by length and depth: {label}<")), "{label}");
        }
        // 3 series × 2 lengths × 3 depths cells, plus the background and the chart frame.
        assert_eq!(elements.iter().filter(|e| *e == "rect").count(), 18 + 2);
    }

    #[test]
    fn x_is_logarithmic_and_y_is_accuracy() {
        let r = report(vec![
            result(1024, AttentionKind::Dense, None, &[true, true]),
            result(2048, AttentionKind::Dense, None, &[true, false]),
            result(4096, AttentionKind::Dense, None, &[false, false]),
            result(32768, AttentionKind::Dense, None, &[false, true]),
        ]);
        let lines = polyline_points(&plot(&r));
        assert_eq!(lines.len(), 1);
        let p = &lines[0];
        assert_eq!(p.len(), 4);
        let step = p[1].0 - p[0].0;
        assert!(step > 0.0);
        assert!((p[2].0 - p[1].0 - step).abs() < 0.2, "doubling the length is one equal step: {p:?}");
        assert!((p[3].0 - p[2].0 - 3.0 * step).abs() < 0.2, "8× is three steps: {p:?}");
        assert_eq!(p[0].1, CHART_TOP);
        assert_eq!(p[1].1, (CHART_TOP + CHART_BOTTOM) / 2.0);
        assert_eq!(p[2].1, CHART_BOTTOM);
    }

    #[test]
    fn heat_colours_run_red_yellow_green() {
        assert_eq!(heat_colour(0.0), "#d73027");
        assert_eq!(heat_colour(0.5), "#fee08b");
        assert_eq!(heat_colour(1.0), "#1a9850");
    }

    #[test]
    fn a_single_length_is_centred() {
        let r = report(vec![result(2048, AttentionKind::Dense, None, &[true])]);
        let lines = polyline_points(&plot(&r));
        assert_eq!(lines[0], vec![((CHART_LEFT + CHART_RIGHT) / 2.0, CHART_TOP)]);
    }
}
