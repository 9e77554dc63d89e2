//! A hand-written SVG plot of a kernel [`Report`]: grouped bars of time relative to native, per
//! kernel and engine, on a log scale, with the geometric means as the last group.

use super::Report;
use std::fmt::Write as _;

/// One colour per engine column (cycled if there are more engines).
const PALETTE: &[&str] = &[
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#9467bd",
    "#c5b0d5", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One bar: the ratio (if the kernel ran correctly) and whether it failed.
type Bar = (Option<f64>, bool);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the plot. Failed cells are drawn as a red ✗ at the baseline.
pub fn render(report: &Report) -> String {
    let engines: Vec<&str> = report
        .engines
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n != "native")
        .collect();
    let col = |name: &str| report.engines.iter().position(|e| e.name == name);

    // Groups: every kernel, then the geometric mean.
    let mut groups: Vec<(String, Vec<Bar>)> = report
        .kernels
        .iter()
        .map(|k| {
            let bars = engines
                .iter()
                .map(|n| {
                    let c = col(n).and_then(|i| k.cells.get(i));
                    (
                        c.and_then(|c| c.ratio),
                        c.is_some_and(|c| c.error.is_some()),
                    )
                })
                .collect();
            (k.name.clone(), bars)
        })
        .collect();
    groups.push((
        "geomean".to_owned(),
        engines.iter().map(|n| (report.geomean(n), false)).collect(),
    ));

    // Log scale from a power of two below the smallest ratio to one above the largest.
    let all: Vec<f64> = groups
        .iter()
        .flat_map(|(_, b)| b.iter().filter_map(|(r, _)| *r))
        .filter(|r| *r > 0.0)
        .collect();
    let lo_exp = all
        .iter()
        .copied()
        .fold(1.0_f64, f64::min)
        .log2()
        .floor()
        .min(-1.0) as i32;
    let hi_exp = all
        .iter()
        .copied()
        .fold(1.0_f64, f64::max)
        .log2()
        .ceil()
        .max(1.0) as i32;

    let bar_w = 9.0;
    let group_w = bar_w * engines.len() as f64 + 14.0;
    let (left, top, plot_h) = (70.0, 60.0, 420.0);
    let plot_w = group_w * groups.len() as f64;
    let legend_h = 22.0 * engines.len().div_ceil(4) as f64;
    let width = left + plot_w + 20.0;
    let height = top + plot_h + 110.0 + legend_h;
    let y_of = |r: f64| {
        let t = (r.log2() - lo_exp as f64) / (hi_exp - lo_exp) as f64;
        top + plot_h * (1.0 - t.clamp(0.0, 1.0))
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let m = &report.machine;
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">PSL WASM compute kernels: time relative to native (log scale, lower is better)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="40" fill="#555">{} · {} CPUs · wasmtime {} · wasmi {} · size {} · median of {} runs</text>"##,
        esc(&m.cpu),
        m.logical_cpus,
        esc(&m.wasmtime),
        esc(&m.wasmi),
        report.options.size.name(),
        report.options.repeat
    );
    // Grid and y labels at every power of two.
    for e in lo_exp..=hi_exp {
        let r = 2f64.powi(e);
        let y = y_of(r);
        let (stroke, w) = if e == 0 { ("#000", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{stroke}" stroke-width="{w}"/>"#,
            left + plot_w
        );
        let label = if r >= 1.0 {
            format!("{r:.0}×")
        } else {
            format!("{r}×")
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">time / native</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    // Bars.
    let base = y_of(1.0);
    for (g, (name, bars)) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_w + 7.0;
        if name == "geomean" {
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{top}" width="{group_w:.1}" height="{plot_h}" fill="#f3f3f3"/>"##,
                x0 - 7.0
            );
        }
        for (i, (ratio, failed)) in bars.iter().enumerate() {
            let x = x0 + i as f64 * bar_w;
            let colour = PALETTE[i % PALETTE.len()];
            match ratio {
                Some(r) if *r > 0.0 => {
                    let y = y_of(*r);
                    let (y1, h) = if y < base {
                        (y, base - y)
                    } else {
                        (base, y - base)
                    };
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{} / {}: {r:.2}×</title></rect>"#,
                        bar_w - 1.0,
                        h.max(0.5),
                        esc(name),
                        esc(engines[i])
                    );
                }
                _ if *failed => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#d00" text-anchor="middle">✗</text>"##,
                        x + bar_w / 2.0,
                        base - 2.0
                    );
                }
                _ => {}
            }
        }
        let lx = x0 + bar_w * bars.len() as f64 / 2.0;
        let ly = top + plot_h + 12.0;
        let weight = if name == "geomean" {
            " font-weight=\"bold\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(45 {lx:.1} {ly:.1})"{weight}>{}</text>"#,
            esc(name)
        );
    }
    // Legend: four per row, with the geometric mean in it.
    let ly0 = top + plot_h + 100.0;
    for (i, name) in engines.iter().enumerate() {
        let x = left + (i % 4) as f64 * 260.0;
        let y = ly0 + (i / 4) as f64 * 22.0;
        let gm = report
            .geomean(name)
            .map_or_else(|| "–".to_owned(), |g| format!("{g:.2}×"));
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="14" height="14" fill="{}"/><text x="{:.1}" y="{:.1}">{} (geomean {gm})</text>"#,
            y - 11.0,
            PALETTE[i % PALETTE.len()],
            x + 20.0,
            y,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}
