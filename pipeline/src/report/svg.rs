//! Horizontal bar charts as inline SVG: no script, no fonts or images to fetch, every
//! label escaped. Each bar carries a `<title>` (a tooltip in browsers) with its value.

use super::html::escape;
use std::fmt::Write;

/// Chart width in CSS pixels (scaled down by the page on narrow screens).
const WIDTH: f64 = 720.0;
/// Left column for labels.
const LABEL_W: f64 = 190.0;
/// Right margin for the value text.
const VALUE_W: f64 = 120.0;
/// One row.
const ROW_H: f64 = 24.0;
/// Bar thickness.
const BAR_H: f64 = 16.0;
/// Space for the title line.
const TOP: f64 = 30.0;
/// Longest label shown in full (in characters).
const MAX_LABEL: usize = 26;

/// One segment of a bar.
#[derive(Debug, Clone)]
pub struct Segment {
    /// What it counts (for the tooltip and legend), e.g. a grade.
    pub name: String,
    /// Its length, in the chart's unit.
    pub value: f64,
    /// Fill colour (a CSS colour).
    pub color: &'static str,
}

/// One bar: a label, one or more stacked segments and the text written after it.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label on the left.
    pub label: String,
    /// Segments, left to right.
    pub segments: Vec<Segment>,
    /// Text after the bar (the value as the reader should see it).
    pub text: String,
}

impl Bar {
    /// A bar of one segment.
    pub fn single(label: &str, value: f64, text: String, color: &'static str) -> Self {
        Self {
            label: label.to_string(),
            segments: vec![Segment {
                name: String::new(),
                value,
                color,
            }],
            text,
        }
    }

    fn total(&self) -> f64 {
        self.segments.iter().map(|s| finite(s.value)).sum()
    }
}

/// A non-negative finite value (NaN, infinities and negatives draw as nothing).
fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

fn short(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(MAX_LABEL - 1).collect();
        s.push('…');
        s
    }
}

/// A bar chart titled `title`; `legend` lists `(name, colour)` of stacked segments (empty
/// for single-segment charts). Bars are scaled to the longest; an empty `bars` (or all
/// zero) still draws the labels with no bar.
pub fn bar_chart(title: &str, bars: &[Bar], legend: &[(&str, &'static str)]) -> String {
    let max = bars.iter().map(Bar::total).fold(0.0, f64::max);
    let plot_w = WIDTH - LABEL_W - VALUE_W;
    let legend_h = if legend.is_empty() { 0.0 } else { ROW_H };
    let height = TOP + legend_h + ROW_H * bars.len() as f64 + 8.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"><title>{t}</title><text class="ct" x="0" y="18">{t}</text>"#,
        t = escape(title)
    );
    let mut x = LABEL_W;
    for (name, color) in legend {
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{c}"/><text class="cl" x="{tx}" y="{ty}">{n}</text>"#,
            y = TOP + 2.0,
            c = escape(color),
            tx = x + 16.0,
            ty = TOP + 12.0,
            n = escape(name)
        );
        x += 22.0 + 7.5 * name.chars().count() as f64;
    }
    let top = TOP + legend_h;
    let _ = write!(
        s,
        r##"<line x1="{LABEL_W}" y1="{top}" x2="{LABEL_W}" y2="{bottom}" stroke="#8a8f98" stroke-width="1"/>"##,
        bottom = top + ROW_H * bars.len() as f64
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = top + ROW_H * i as f64 + (ROW_H - BAR_H) / 2.0;
        let _ = write!(
            s,
            r#"<text class="cl" x="{lx}" y="{ty:.1}" text-anchor="end">{l}</text>"#,
            lx = LABEL_W - 8.0,
            ty = y + BAR_H - 3.0,
            l = escape(&short(&bar.label))
        );
        let mut x = LABEL_W;
        for seg in &bar.segments {
            let v = finite(seg.value);
            if v <= 0.0 || max <= 0.0 {
                continue;
            }
            let w = v / max * plot_w;
            let tip = if seg.name.is_empty() {
                format!("{}: {}", bar.label, bar.text)
            } else {
                format!("{} / {}: {}", bar.label, seg.name, v)
            };
            let _ = write!(
                s,
                r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{BAR_H}" fill="{c}"><title>{tip}</title></rect>"#,
                c = escape(seg.color),
                tip = escape(&tip)
            );
            x += w;
        }
        let _ = write!(
            s,
            r#"<text class="cv" x="{vx:.2}" y="{ty:.1}">{v}</text>"#,
            vx = x + 6.0,
            ty = y + BAR_H - 3.0,
            v = escape(&bar.text)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_longest_and_escape_labels() {
        let svg = bar_chart(
            "a <b> & c",
            &[
                Bar::single("<script>", 10.0, "10".into(), "#123456"),
                Bar::single("half", 5.0, "5".into(), "#123456"),
                Bar::single("nan", f64::NAN, "?".into(), "#123456"),
            ],
            &[],
        );
        assert!(svg.contains("a &lt;b&gt; &amp; c"), "{svg}");
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
        assert!(svg.contains(r#"width="410.00""#), "{svg}");
        assert!(svg.contains(r#"width="205.00""#), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn all_zero_draws_no_bar() {
        let svg = bar_chart("t", &[Bar::single("x", 0.0, "0".into(), "#000")], &[]);
        assert!(!svg.contains("<rect"), "{svg}");
    }

    #[test]
    fn long_labels_are_shortened() {
        assert_eq!(short("abc"), "abc");
        let l = short(&"x".repeat(40));
        assert_eq!(l.chars().count(), MAX_LABEL);
        assert!(l.ends_with('…'));
    }
}
