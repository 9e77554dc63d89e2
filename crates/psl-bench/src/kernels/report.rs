//! Markdown rendering of a kernel [`Report`]: ratios to native, ratios to plain Cranelift on
//! the same module (interruption cost, interpreter gap), median times, compile times, failures.

use super::Report;
use super::engines::ModuleKind;
use std::fmt::Write as _;

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

fn ms(t: Option<f64>) -> String {
    t.map_or_else(
        || "–".to_owned(),
        |t| match t {
            t if t >= 100.0 => format!("{t:.0}"),
            t if t >= 1.0 => format!("{t:.1}"),
            t => format!("{t:.3}"),
        },
    )
}

/// The report as Markdown (two tables and the failures, if any).
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let names: Vec<&str> = report.engines.iter().map(|e| e.name.as_str()).collect();
    let native = names.iter().position(|n| *n == "native");
    let others: Vec<usize> = (0..names.len()).filter(|e| Some(*e) != native).collect();

    let m = &report.machine;
    let _ = writeln!(
        out,
        "Kernels at size `{}`, median of {} runs ({} for interpreters), fresh instance per run. \
         {} ({} logical CPUs), wasmtime {}, wasmi {}, {}.\n",
        report.options.size.name(),
        report.options.repeat,
        report.options.slow_repeat,
        m.cpu,
        m.logical_cpus,
        m.wasmtime,
        m.wasmi,
        m.rustc
    );

    // Ratios.
    let _ = writeln!(
        out,
        "Time relative to native (median; lower is better; ✗ = failed):\n"
    );
    let _ = write!(out, "| kernel | native ms |");
    for &e in &others {
        let _ = write!(out, " {} |", names[e]);
    }
    let _ = write!(out, "\n|---|---:|");
    for _ in &others {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for k in &report.kernels {
        let native_ms = native.and_then(|n| k.cells[n].median_ms);
        let _ = write!(out, "| {} | {} |", k.name, ms(native_ms));
        for &e in &others {
            let c = &k.cells[e];
            let cell = if c.error.is_some() {
                "✗".to_owned()
            } else {
                ratio(c.ratio)
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    let _ = write!(out, "| **geomean** | |");
    for &e in &others {
        let _ = write!(out, " **{}** |", ratio(report.geomean(names[e])));
    }
    out.push_str("\n\n");

    relative_to_plain(report, &mut out);

    // Medians.
    let _ = writeln!(out, "Median time in milliseconds:\n");
    let _ = write!(out, "| kernel |");
    for name in &names {
        let _ = write!(out, " {name} |");
    }
    let _ = write!(out, "\n|---|");
    for _ in &names {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for k in &report.kernels {
        let _ = write!(out, "| {} |", k.name);
        for c in &k.cells {
            let _ = write!(out, " {} |", ms(c.median_ms));
        }
        out.push('\n');
    }
    out.push('\n');

    // Compile times, informative.
    let _ = writeln!(
        out,
        "Module preparation (compile) time, not included above:\n"
    );
    let _ = writeln!(out, "| engine | module | prepare ms |\n|---|---|---:|");
    for e in &report.engines {
        let prep = if e.error.is_some() {
            "✗".to_owned()
        } else {
            format!("{:.1}", e.prepare_ms)
        };
        let _ = writeln!(out, "| {} | {:?} | {prep} |", e.name, e.module);
    }
    out.push('\n');

    if report.failures.is_empty() {
        let _ = writeln!(
            out,
            "All checksums match native (relative error ≤ {:e}).",
            super::CHECKSUM_TOLERANCE
        );
    } else {
        let _ = writeln!(out, "**Failures:**\n");
        for f in &report.failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}

/// The plain-Cranelift engine that others on the same module are compared with.
fn plain_engine(module: ModuleKind) -> Option<&'static str> {
    match module {
        ModuleKind::Simd => Some("cranelift-simd"),
        ModuleKind::Scalar => Some("cranelift-scalar"),
        ModuleKind::Native => None,
    }
}

/// Ratio of each wasm engine's median to plain Cranelift's on the same module build: the cost
/// of interruption (epoch, fuel, a production deadline mechanism) and the JIT/interpreter gap.
fn relative_to_plain(report: &Report, out: &mut String) {
    let col = |name: &str| report.engines.iter().position(|e| e.name == name);
    let pairs: Vec<(usize, usize)> = report
        .engines
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let base = col(plain_engine(e.module)?)?;
            (base != i).then_some((i, base))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let ratio_of = |k: &super::KernelResult, (e, base): (usize, usize)| {
        let (c, b) = (&k.cells[e], &k.cells[base]);
        if c.error.is_some() || b.error.is_some() {
            return None;
        }
        Some(c.median_ms? / b.median_ms?)
    };
    let _ = writeln!(
        out,
        "Time relative to plain Cranelift on the same module build (the cost of interruption \
         checks, and the interpreter gap):\n"
    );
    let _ = write!(out, "| kernel |");
    for &(e, base) in &pairs {
        let _ = write!(
            out,
            " {} / {} |",
            report.engines[e].name, report.engines[base].name
        );
    }
    let _ = write!(out, "\n|---|");
    for _ in &pairs {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    for k in &report.kernels {
        let _ = write!(out, "| {} |", k.name);
        for (p, &pair) in pairs.iter().enumerate() {
            let r = ratio_of(k, pair);
            if let Some(r) = r {
                all[p].push(r);
            }
            let _ = write!(out, " {} |", ratio(r));
        }
        out.push('\n');
    }
    let _ = write!(out, "| **geomean** |");
    for v in &all {
        let _ = write!(out, " **{}** |", ratio(super::geomean(v)));
    }
    out.push_str("\n\n");
}
