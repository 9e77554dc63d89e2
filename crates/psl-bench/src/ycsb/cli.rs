//! The `psl-bench ycsb` command line: flags named after YCSB's properties.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::record::InsertOrder;
use super::{Config, Distribution, Report, run};

/// `psl-bench ycsb`: a YCSB core workload against a PSL state backend.
#[derive(clap::Args, Debug)]
pub struct YcsbArgs {
    /// Workload: a, b, c, d, e, f, or custom (with the proportion flags).
    #[arg(long, default_value = "a")]
    pub workload: String,
    /// Backend: `local` (psl-node's in-memory single-node LocalState) or `scl` (the embedded
    /// SCL cluster with `--workers` replicas and a DataCapsule).
    #[arg(long, default_value = "local")]
    pub target: String,
    /// Workers of the `scl` target.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Records loaded.
    #[arg(long, default_value_t = 1000)]
    pub recordcount: u64,
    /// Operations in the run phase.
    #[arg(long, default_value_t = 1000)]
    pub operationcount: u64,
    /// Client threads.
    #[arg(long, alias = "threadcount", default_value_t = 1)]
    pub threads: usize,
    /// Fields per record.
    #[arg(long, default_value_t = 10)]
    pub fieldcount: usize,
    /// Bytes per field.
    #[arg(long, default_value_t = 100)]
    pub fieldlength: usize,
    /// Override: uniform, zipfian (scrambled, YCSB's), plainzipfian, latest, hotspot.
    #[arg(long)]
    pub requestdistribution: Option<String>,
    /// Override readproportion.
    #[arg(long)]
    pub readproportion: Option<f64>,
    /// Override updateproportion.
    #[arg(long)]
    pub updateproportion: Option<f64>,
    /// Override insertproportion.
    #[arg(long)]
    pub insertproportion: Option<f64>,
    /// Override scanproportion.
    #[arg(long)]
    pub scanproportion: Option<f64>,
    /// Override readmodifywriteproportion.
    #[arg(long)]
    pub readmodifywriteproportion: Option<f64>,
    /// Reads return all fields (false: one random field).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub readallfields: bool,
    /// Updates write all fields (false: one random field, read-modify-write of the record).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub writeallfields: bool,
    /// hashed (YCSB default) or ordered.
    #[arg(long, default_value = "hashed")]
    pub insertorder: String,
    /// Zero-pad key numbers to this many digits.
    #[arg(long, default_value_t = 1)]
    pub zeropadding: usize,
    /// Shortest scan.
    #[arg(long, default_value_t = 1)]
    pub minscanlength: u64,
    /// Longest scan.
    #[arg(long, default_value_t = 100)]
    pub maxscanlength: u64,
    /// hotspotdatafraction (with --requestdistribution hotspot).
    #[arg(long, default_value_t = 0.2)]
    pub hotspotdatafraction: f64,
    /// hotspotopnfraction (with --requestdistribution hotspot).
    #[arg(long, default_value_t = 0.8)]
    pub hotspotopnfraction: f64,
    /// Seed of every random stream.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Directory for ycsb-<workload>-<target>.json and .md.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

impl YcsbArgs {
    /// The run configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = Config::preset(&self.workload)?;
        config.record_count = self.recordcount;
        config.operation_count = self.operationcount;
        config.threads = self.threads;
        config.field_count = self.fieldcount;
        config.field_length = self.fieldlength;
        if let Some(name) = &self.requestdistribution {
            config.distribution = match Distribution::parse(name)? {
                Distribution::Hotspot { .. } => Distribution::Hotspot {
                    data_fraction: self.hotspotdatafraction,
                    op_fraction: self.hotspotopnfraction,
                },
                other => other,
            };
        }
        let p = &mut config.proportions;
        for (flag, slot) in [
            (self.readproportion, &mut p.read),
            (self.updateproportion, &mut p.update),
            (self.insertproportion, &mut p.insert),
            (self.scanproportion, &mut p.scan),
            (self.readmodifywriteproportion, &mut p.read_modify_write),
        ] {
            if let Some(value) = flag {
                *slot = value;
            }
        }
        config.read_all_fields = self.readallfields;
        config.write_all_fields = self.writeallfields;
        config.insert_order = match self.insertorder.as_str() {
            "hashed" => InsertOrder::Hashed,
            "ordered" => InsertOrder::Ordered,
            other => bail!("unknown insertorder {other:?} (hashed, ordered)"),
        };
        config.zero_padding = self.zeropadding;
        config.min_scan_length = self.minscanlength;
        config.max_scan_length = self.maxscanlength;
        config.seed = self.seed;
        Ok(config)
    }
}

/// Runs the command: the workload, then the JSON and Markdown files, then the summary on stdout.
pub fn main(args: YcsbArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let report = match args.target.as_str() {
        "local" => run(&psl_node::LocalState::default(), &config, "local")?,
        "scl" => {
            // The embedded SCL cluster: `workers` replicas in this process, records sealed,
            // signed and appended (fsync) to a DataCapsule in a temporary directory at every
            // flush; sessions spread over the workers in turn.
            let dir = tempfile::tempdir()?;
            let cluster =
                psl_node::scl::SclCluster::start(&dir.path().join("capsule"), args.workers)
                    .context("starting the SCL cluster")?;
            let target = format!("scl{}", args.workers);
            let settle = || {
                anyhow::ensure!(
                    cluster.settle(std::time::Duration::from_secs(600)),
                    "replicas did not converge after the load"
                );
                Ok(())
            };
            crate::ycsb::run_with_barrier(
                &psl_node::scl::RoundRobin(cluster.clone()),
                &config,
                &target,
                &settle,
            )?
        }
        other => bail!("unknown target {other:?} (local, scl)"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stem = format!("ycsb-{}-{}", config.workload, report.target);
    let markdown = format!("{}\n{}\n", Report::markdown_header(), report.markdown());
    for (file, text) in [
        (
            format!("{stem}.json"),
            serde_json::to_string_pretty(&report)?,
        ),
        (format!("{stem}.md"), markdown.clone()),
    ] {
        let path = args.out.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    for phase in &report.phases {
        eprintln!(
            "{}: {} ops in {:.2} s = {:.0} ops/s, {} failed",
            phase.phase, phase.operations, phase.elapsed_s, phase.throughput_ops_s, phase.failed
        );
    }
    println!("{markdown}");
    let failed: u64 = report.phases.iter().map(|p| p.failed).sum();
    anyhow::ensure!(failed == 0, "{failed} operation(s) failed; see the JSON");
    Ok(())
}
