//! Starting `psl node` processes and waiting until they serve (for `psl up`, tests and
//! benchmarks).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `psl node` process; killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Child,
    /// What it printed when ready.
    pub ready: String,
    /// Its log file (stderr).
    pub log: PathBuf,
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The process could not be started.
    #[error("starting {0}: {1}")]
    Start(String, std::io::Error),
    /// It exited or said nothing in time; its log says why.
    #[error("{role} did not become ready; see {log}:\n{tail}")]
    NotReady {
        /// The role.
        role: String,
        /// Its log.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

impl NodeProcess {
    /// Runs `<psl> node --role <role> --config <config> <args>` with its stderr in `log`, and
    /// waits (at most `wait`) for its `ready` line on stdout.
    pub fn spawn(
        psl: &Path,
        role: &str,
        config: &Path,
        args: &[String],
        log: &Path,
        wait: Duration,
    ) -> Result<Self, SpawnError> {
        let start = |e| SpawnError::Start(role.to_string(), e);
        let stderr = std::fs::File::create(log).map_err(start)?;
        let mut child = Command::new(psl)
            .args(["node", "--role", role, "--config"])
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(start)?;
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
                // Keep draining so the node never blocks on a full pipe.
                for _ in lines {}
            });
        }
        let mut node = NodeProcess {
            child,
            ready: String::new(),
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(wait) {
            Ok(line) if line.starts_with("ready") => {
                node.ready = line;
                Ok(node)
            }
            _ => {
                node.kill();
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                Err(SpawnError::NotReady {
                    role: role.to_string(),
                    log: log.display().to_string(),
                    tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                })
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`-STOP`, `-CONT`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> std::io::Result<bool> {
        Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
