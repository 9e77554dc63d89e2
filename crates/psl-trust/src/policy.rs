//! The application's attestation policy: which enclaves may receive its keys.
//!
//! A JSON file (see `docs/trust.md` for an example):
//!
//! ```json
//! {
//!   "version": 1,
//!   "allow_sim": false,
//!   "sim_roots": [],
//!   "allow_debug": false,
//!   "manager": { "measurements": ["sev-snp:<96 hex>"] },
//!   "worker": { "measurements": ["sev-snp:<96 hex>"] },
//!   "functions": { "<64 hex function hash>": { "measurements": [] } },
//!   "pin_functions": true,
//!   "tcb": {
//!     "sev_snp_min": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 },
//!     "dcap_accepted_status": ["UpToDate"],
//!     "dcap_rejected_advisories": []
//!   }
//! }
//! ```
//!
//! Rules, in the order [`Policy::check`] applies them (the first failure is the reason given):
//!
//! 1. simulated evidence needs `allow_sim` (strict policies refuse it);
//! 2. debug-enabled TEEs need `allow_debug`;
//! 3. TCB: SEV-SNP needs `tcb.sev_snp_min` and a reported TCB at least that in every component;
//!    SGX/TDX need a DCAP status listed in `tcb.dcap_accepted_status` and no advisory listed in
//!    `tcb.dcap_rejected_advisories`;
//! 4. the claims must carry a role (from a verified binding);
//! 5. manager: the measurement is listed in `manager.measurements`;
//! 6. worker: with `pin_functions`, a worker must name a function listed in `functions`; its
//!    measurement must be listed in `worker.measurements` or in the function's own
//!    `measurements` (the simulated measurement covers the function; hardware measurements
//!    cover the binary).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::evidence::{Anchors, Claims, SnpTcb, Tcb};
use crate::limits::{POLICY_BYTES_MAX, POLICY_LIST_MAX};
use crate::types::{FunctionHash, Measurement, Platform, Role};

/// The policy file format version.
pub const POLICY_VERSION: u32 = 1;

/// Expected measurements of one role or function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Accepted measurements (`<platform>:<hex>`).
    #[serde(default)]
    pub measurements: Vec<Measurement>,
}

/// Accepted TCB levels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbPolicy {
    /// Minimum SEV-SNP reported TCB; `None` refuses all SEV-SNP evidence.
    #[serde(default)]
    pub sev_snp_min: Option<SnpTcb>,
    /// Accepted DCAP TCB statuses (SGX and TDX).
    #[serde(default = "default_dcap_status")]
    pub dcap_accepted_status: Vec<String>,
    /// Intel advisories that refuse a quote even with an accepted status.
    #[serde(default)]
    pub dcap_rejected_advisories: Vec<String>,
}

fn default_dcap_status() -> Vec<String> {
    vec!["UpToDate".to_string()]
}

impl Default for TcbPolicy {
    fn default() -> Self {
        TcbPolicy {
            sev_snp_min: None,
            dcap_accepted_status: default_dcap_status(),
            dcap_rejected_advisories: Vec::new(),
        }
    }
}

/// An attestation policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version ([`POLICY_VERSION`]).
    pub version: u32,
    /// Accept the simulated TEE (development only: it has no hardware protection).
    #[serde(default)]
    pub allow_sim: bool,
    /// Public keys (hex) of the simulated roots whose evidence is accepted.
    #[serde(default, with = "hex_keys")]
    pub sim_roots: Vec<[u8; 32]>,
    /// Accept TEEs with debugging enabled.
    #[serde(default)]
    pub allow_debug: bool,
    /// Expected manager measurements.
    #[serde(default)]
    pub manager: Expected,
    /// Expected worker measurements (any function).
    #[serde(default)]
    pub worker: Expected,
    /// Functions by hash, with measurements specific to each.
    #[serde(default)]
    pub functions: BTreeMap<FunctionHash, Expected>,
    /// Only functions listed in `functions` may run.
    #[serde(default)]
    pub pin_functions: bool,
    /// Accepted TCB levels.
    #[serde(default)]
    pub tcb: TcbPolicy,
}

mod hex_keys {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(keys: &[[u8; 32]], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(keys.len()))?;
        for key in keys {
            seq.serialize_element(&hex::encode(key))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text, &mut key).map_err(serde::de::Error::custom)?;
                Ok(key)
            })
            .collect()
    }
}

/// Why a policy file is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("policy file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Too large.
    #[error("policy of {len} bytes exceeds {max}")]
    TooLarge {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not valid JSON for the format.
    #[error("policy does not parse: {0}")]
    Parse(String),
    /// Unsupported format version.
    #[error("policy version {0} is not supported (expected {POLICY_VERSION})")]
    Version(u32),
    /// A list is too long.
    #[error("policy list {what} has {len} entries, more than {max}")]
    ListTooLong {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why claims are refused by a policy. Each variant is one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Simulated evidence under a policy without `allow_sim`.
    #[error(
        "SIMULATED TEE evidence refused: the policy does not allow simulation (allow_sim = false)"
    )]
    SimulatedNotAllowed,
    /// Debugging is enabled in the TEE.
    #[error("{0} TEE has debugging enabled and the policy does not allow debug")]
    DebugNotAllowed(Platform),
    /// The policy accepts no TCB of this platform.
    #[error("the policy accepts no {0} evidence (no TCB requirement configured)")]
    PlatformNotAccepted(Platform),
    /// SEV-SNP TCB below the minimum.
    #[error("SEV-SNP reported TCB ({found}) is below the policy minimum ({min})")]
    TcbTooLow {
        /// Reported.
        found: SnpTcb,
        /// Required.
        min: SnpTcb,
    },
    /// DCAP TCB status not accepted.
    #[error("{platform} TCB status {status} is not accepted (accepted: {accepted:?})")]
    TcbStatusNotAccepted {
        /// SGX or TDX.
        platform: Platform,
        /// The status.
        status: String,
        /// What the policy accepts.
        accepted: Vec<String>,
    },
    /// A refused Intel advisory applies.
    #[error("{platform} TCB is affected by refused advisory {advisory}")]
    AdvisoryRejected {
        /// SGX or TDX.
        platform: Platform,
        /// The advisory id.
        advisory: String,
    },
    /// The claims carry no role (the binding was not verified).
    #[error("claims carry no role: the report data binding was not verified")]
    NoRole,
    /// The measurement is not expected for the role.
    #[error("{role} measurement {measurement} is not in the policy")]
    MeasurementNotAllowed {
        /// The role.
        role: Role,
        /// The measurement found.
        measurement: Measurement,
    },
    /// The function is not pinned in the policy.
    #[error("function {0} is not allowed by the policy")]
    FunctionNotAllowed(FunctionHash),
    /// The policy pins functions and the worker names none.
    #[error("the policy pins functions and the worker names no function")]
    FunctionRequired,
    /// A manager claimed to run a function.
    #[error("a manager does not run functions (claims name {0})")]
    ManagerWithFunction(FunctionHash),
}

impl Policy {
    /// A strict, empty policy: no simulation, no debug, nothing expected (refuses everything
    /// until measurements are added).
    pub fn strict() -> Self {
        Policy {
            version: POLICY_VERSION,
            allow_sim: false,
            sim_roots: Vec::new(),
            allow_debug: false,
            manager: Expected::default(),
            worker: Expected::default(),
            functions: BTreeMap::new(),
            pin_functions: false,
            tcb: TcbPolicy::default(),
        }
    }

    /// A development policy for the simulated TEE: trusts `sim_root`, expects the given
    /// manager measurement and pins the given functions with their simulated worker
    /// measurements.
    pub fn dev_sim(
        sim_root: [u8; 32],
        manager: Measurement,
        functions: impl IntoIterator<Item = (FunctionHash, Measurement)>,
    ) -> Self {
        let mut policy = Policy::strict();
        policy.allow_sim = true;
        policy.sim_roots.push(sim_root);
        policy.manager.measurements.push(manager);
        policy.pin_functions = true;
        for (function, measurement) in functions {
            policy
                .functions
                .entry(function)
                .or_default()
                .measurements
                .push(measurement);
        }
        policy
    }

    /// Parses and checks a JSON policy.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyFileError> {
        if bytes.len() > POLICY_BYTES_MAX {
            return Err(PolicyFileError::TooLarge {
                len: bytes.len(),
                max: POLICY_BYTES_MAX,
            });
        }
        let policy: Policy = serde_json::from_slice(bytes)
            .map_err(|error| PolicyFileError::Parse(error.to_string()))?;
        if policy.version != POLICY_VERSION {
            return Err(PolicyFileError::Version(policy.version));
        }
        let lists = [
            ("sim_roots", policy.sim_roots.len()),
            ("manager.measurements", policy.manager.measurements.len()),
            ("worker.measurements", policy.worker.measurements.len()),
            ("functions", policy.functions.len()),
            (
                "tcb.dcap_accepted_status",
                policy.tcb.dcap_accepted_status.len(),
            ),
            (
                "tcb.dcap_rejected_advisories",
                policy.tcb.dcap_rejected_advisories.len(),
            ),
        ];
        for (what, len) in lists {
            if len > POLICY_LIST_MAX {
                return Err(PolicyFileError::ListTooLong {
                    what,
                    len,
                    max: POLICY_LIST_MAX,
                });
            }
        }
        for expected in policy.functions.values() {
            if expected.measurements.len() > POLICY_LIST_MAX {
                return Err(PolicyFileError::ListTooLong {
                    what: "functions.*.measurements",
                    len: expected.measurements.len(),
                    max: POLICY_LIST_MAX,
                });
            }
        }
        Ok(policy)
    }

    /// Reads and parses a JSON policy file (bounded read).
    pub fn load(path: &Path) -> Result<Self, PolicyFileError> {
        use std::io::Read;
        let io = |source| PolicyFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        let limit = u64::try_from(POLICY_BYTES_MAX)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        file.take(limit).read_to_end(&mut bytes).map_err(io)?;
        Self::from_json(&bytes)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The trust anchors this policy adds (simulated roots, only when simulation is allowed).
    pub fn anchors(&self) -> Anchors {
        Anchors {
            sim_roots: if self.allow_sim {
                self.sim_roots.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Checks verified claims (with their role and function from a verified binding).
    pub fn check(&self, claims: &Claims) -> Result<(), PolicyError> {
        if claims.simulated && !self.allow_sim {
            return Err(PolicyError::SimulatedNotAllowed);
        }
        if claims.debug && !self.allow_debug {
            return Err(PolicyError::DebugNotAllowed(claims.platform));
        }
        self.check_tcb(claims)?;
        let role = claims.role.ok_or(PolicyError::NoRole)?;
        let refused = || PolicyError::MeasurementNotAllowed {
            role,
            measurement: claims.measurement.clone(),
        };
        match role {
            Role::Manager => {
                if let Some(function) = claims.function {
                    return Err(PolicyError::ManagerWithFunction(function));
                }
                if !self.manager.measurements.contains(&claims.measurement) {
                    return Err(refused());
                }
            }
            Role::Worker => {
                let listed = claims
                    .function
                    .as_ref()
                    .and_then(|function| self.functions.get(function));
                if self.pin_functions {
                    let function = claims.function.ok_or(PolicyError::FunctionRequired)?;
                    if listed.is_none() {
                        return Err(PolicyError::FunctionNotAllowed(function));
                    }
                }
                let expected = self.worker.measurements.contains(&claims.measurement)
                    || listed.is_some_and(|expected| {
                        expected.measurements.contains(&claims.measurement)
                    });
                if !expected {
                    return Err(refused());
                }
            }
        }
        Ok(())
    }

    fn check_tcb(&self, claims: &Claims) -> Result<(), PolicyError> {
        match (&claims.tcb, claims.platform) {
            (Tcb::Simulated, Platform::Sim) => Ok(()),
            (Tcb::SevSnp(found), Platform::SevSnp) => {
                let min = self
                    .tcb
                    .sev_snp_min
                    .ok_or(PolicyError::PlatformNotAccepted(Platform::SevSnp))?;
                if found.at_least(&min) {
                    Ok(())
                } else {
                    Err(PolicyError::TcbTooLow { found: *found, min })
                }
            }
            (
                Tcb::Dcap {
                    status,
                    advisory_ids,
                },
                platform @ (Platform::Sgx | Platform::Tdx),
            ) => {
                if !self.tcb.dcap_accepted_status.contains(status) {
                    return Err(PolicyError::TcbStatusNotAccepted {
                        platform,
                        status: status.clone(),
                        accepted: self.tcb.dcap_accepted_status.clone(),
                    });
                }
                if let Some(advisory) = advisory_ids
                    .iter()
                    .find(|advisory| self.tcb.dcap_rejected_advisories.contains(advisory))
                {
                    return Err(PolicyError::AdvisoryRejected {
                        platform,
                        advisory: advisory.clone(),
                    });
                }
                Ok(())
            }
            (_, platform) => Err(PolicyError::PlatformNotAccepted(platform)),
        }
    }
}
