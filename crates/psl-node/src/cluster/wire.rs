//! What the nodes say to each other inside sealed envelopes (see [`super::channel`]), and the
//! bus subjects they say it on. Lock messages are JSON (small, and only ever decoded after the
//! envelope authenticated); invocations are a binary frame (inputs and outputs can be large).

use std::time::Duration;

use psl_capsule::WriterId;
use psl_scl::lock::{FencingToken, Grant, HolderId, LockMode, LockName, Watermark};
use serde::{Deserialize, Serialize};

/// Subject of the manager's sealed lock requests.
pub fn manager_subject(app: &str) -> String {
    format!("psl.{app}.manager")
}

/// Subject of enrollment (attested key exchange; not sealed, there are no keys yet).
pub fn enroll_subject(app: &str) -> String {
    format!("psl.{app}.enroll")
}

/// Subject of the manager's prepare-phase offer (`psl attest`).
pub fn attest_subject(app: &str) -> String {
    format!("psl.{app}.attest")
}

/// Subject of invocations of `function` (queue group [`INVOKE_GROUP`]: each goes to one of
/// the workers that deployed it). `None` unless the name is 1-64 of `a-z`, `0-9`, `-`, `_`.
pub fn invoke_subject(app: &str, function: &str) -> Option<String> {
    let valid = !function.is_empty()
        && function.len() <= FUNCTION_NAME_MAX
        && function
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    valid.then(|| format!("psl.{app}.invoke.{function}"))
}

/// Subject of deploys (gateway to manager; sealed [`DeployFrame`]s).
pub fn deploy_subject(app: &str) -> String {
    format!("psl.{app}.deploy")
}

/// Subject of deploy notices (manager to every worker; sealed [`DeployFrame`]s).
pub fn functions_subject(app: &str) -> String {
    format!("psl.{app}.functions")
}

/// Subject of module fetches (a worker asks the manager for a deployed module by name).
pub fn modules_subject(app: &str) -> String {
    format!("psl.{app}.modules")
}

/// The workers' queue group for invocations.
pub const INVOKE_GROUP: &str = "workers";

/// A watermark on the wire.
pub type WireWatermark = Vec<([u8; 16], u64)>;

/// Converts a watermark for the wire.
pub fn watermark_to_wire(watermark: &Watermark) -> WireWatermark {
    watermark.iter().map(|(w, s)| (w.0, *s)).collect()
}

/// Converts a watermark from the wire.
pub fn watermark_from_wire(wire: &WireWatermark) -> Watermark {
    let mut watermark = Watermark::new();
    for (writer, seq) in wire {
        watermark.observe(WriterId(*writer), *seq);
    }
    watermark
}

/// A request to the manager.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ManagerRequest {
    /// A new worker (or gateway) incarnation asks for the manager's writer id, the lease, the
    /// store heads (it serves nothing before it applied them: a restarted worker cannot roll
    /// the application back) and the policy's function list.
    Hello,
    /// Acquire a lock, waiting at most `wait_ms` (the reply comes when granted).
    Acquire {
        holder: [u8; 16],
        request_id: u64,
        name: Vec<u8>,
        write: bool,
        wait_ms: u64,
    },
    /// Release a grant.
    Release {
        holder: [u8; 16],
        name: Vec<u8>,
        token: u64,
        watermark: WireWatermark,
        fenced: bool,
    },
    /// Acknowledge a flush under a held grant.
    Acknowledge {
        holder: [u8; 16],
        name: Vec<u8>,
        token: u64,
        watermark: WireWatermark,
    },
    /// Renew a lease.
    Renew {
        holder: [u8; 16],
        name: Vec<u8>,
        token: u64,
    },
    /// Cancel a request that timed out (a grant that raced it is released).
    Cancel {
        holder: [u8; 16],
        name: Vec<u8>,
        request_id: u64,
    },
    /// Forget a dead holder.
    Forget { holder: [u8; 16] },
    /// List the functions deployed through the gateway.
    ListFunctions,
}

/// A grant on the wire.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireGrant {
    pub name: Vec<u8>,
    pub holder: [u8; 16],
    pub request_id: u64,
    pub write: bool,
    pub token: u64,
    pub watermark: WireWatermark,
    /// Lease left when the manager sent it.
    pub lease_ms: u64,
}

impl WireGrant {
    /// From a grant, with the lease left.
    pub fn new(grant: &Grant, lease: Duration) -> Self {
        WireGrant {
            name: grant.name.as_bytes().to_vec(),
            holder: grant.holder.0,
            request_id: grant.request_id,
            write: grant.mode == LockMode::Write,
            token: grant.token.0,
            watermark: watermark_to_wire(&grant.watermark),
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Back to a grant and its lease (`None`: an invalid lock name).
    pub fn into_grant(self) -> Option<(Grant, Duration)> {
        let name = LockName::new(self.name).ok()?;
        Some((
            Grant {
                name,
                holder: HolderId(self.holder),
                request_id: self.request_id,
                mode: if self.write {
                    LockMode::Write
                } else {
                    LockMode::Read
                },
                token: FencingToken(self.token),
                watermark: watermark_from_wire(&self.watermark),
                lease_until_ms: 0,
            },
            Duration::from_millis(self.lease_ms),
        ))
    }
}

/// Error classes the manager answers with.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The grant is gone (expired, fenced): the holder's writes are refused.
    Fenced,
    /// Not granted in time.
    Timeout,
    /// A limit of the lock service.
    Limit,
    /// Anything else (the manager could not do it now).
    Unavailable,
    /// The sender is not an enrolled writer.
    NotEnrolled,
    /// A module that does not validate, or a bad function name.
    BadModule,
    /// The policy does not allow this module.
    NotAllowed,
}

/// The manager's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ManagerReply {
    /// To `Hello`.
    Hello {
        manager: [u8; 16],
        lease_ms: u64,
        heads: Vec<([u8; 16], u64)>,
        /// Module hashes the policy allows (empty: any).
        functions: Vec<String>,
        /// Functions deployed through the gateway: name and module id (fetch them by name).
        deployed: Vec<(String, String)>,
    },
    /// A deploy was accepted: the module id, and whether a worker already serves it.
    Deployed { id: String, served: bool },
    /// Functions deployed through the gateway: name and module id.
    Functions(Vec<(String, String)>),
    /// A lock granted.
    Granted(WireGrant),
    /// A renewal: the lease left.
    Renewed { lease_ms: u64 },
    /// Done.
    Done,
    /// Refused.
    Error { kind: ErrorKind, message: String },
}

/// Outcome classes of an invocation on the wire (the gateway maps them to HTTP statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvokeStatus {
    Ok = 0,
    UnknownFunction = 1,
    FunctionFailed = 2,
    DeadlineExceeded = 3,
    LimitExceeded = 4,
    Busy = 5,
    StateUnavailable = 6,
    Internal = 7,
    Refused = 8,
}

impl InvokeStatus {
    fn from_byte(byte: u8) -> Option<Self> {
        use InvokeStatus::*;
        [
            Ok,
            UnknownFunction,
            FunctionFailed,
            DeadlineExceeded,
            LimitExceeded,
            Busy,
            StateUnavailable,
            Internal,
            Refused,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }
}

/// Longest function name in an invocation frame.
pub const FUNCTION_NAME_MAX: usize = 64;

/// An invocation: function name, when the gateway sent it (ms since the Unix epoch; workers
/// refuse stale ones, which bounds replays), and the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub function: String,
    pub sent_ms: u64,
    pub input: Vec<u8>,
}

/// Why a frame did not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed frame: {0}")]
pub struct FrameError(pub &'static str);

impl Invocation {
    /// Encodes: name length (1 byte), name, sent_ms (8 bytes LE), input.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.function.as_bytes();
        let mut out = Vec::with_capacity(1 + name.len() + 8 + self.input.len());
        out.push(u8::try_from(name.len().min(FUNCTION_NAME_MAX)).unwrap_or(0));
        out.extend_from_slice(&name[..name.len().min(FUNCTION_NAME_MAX)]);
        out.extend_from_slice(&self.sent_ms.to_le_bytes());
        out.extend_from_slice(&self.input);
        out
    }

    /// Decodes a frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (&len, rest) = bytes.split_first().ok_or(FrameError("empty"))?;
        let len = usize::from(len);
        if len > FUNCTION_NAME_MAX || rest.len() < len + 8 {
            return Err(FrameError("truncated or overlong name"));
        }
        let function = std::str::from_utf8(&rest[..len])
            .map_err(|_| FrameError("name not UTF-8"))?
            .to_string();
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&rest[len..len + 8]);
        Ok(Invocation {
            function,
            sent_ms: u64::from_le_bytes(sent),
            input: rest[len + 8..].to_vec(),
        })
    }
}

/// Encodes an invocation's answer: status byte, then the output (or the error message).
pub fn encode_answer(status: InvokeStatus, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(status as u8);
    out.extend_from_slice(body);
    out
}

/// Decodes an invocation's answer.
pub fn decode_answer(bytes: &[u8]) -> Result<(InvokeStatus, &[u8]), FrameError> {
    let (&status, body) = bytes.split_first().ok_or(FrameError("empty answer"))?;
    let status = InvokeStatus::from_byte(status).ok_or(FrameError("unknown status"))?;
    Ok((status, body))
}

/// A deploy: function name and module bytes. Encoded as name length (1 byte), name, module.
#[derive(Debug, PartialEq, Eq)]
pub struct DeployFrame {
    pub name: String,
    pub module: Vec<u8>,
}

impl DeployFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.name.as_bytes()[..self.name.len().min(FUNCTION_NAME_MAX)];
        let mut out = Vec::with_capacity(1 + name.len() + self.module.len());
        out.push(u8::try_from(name.len()).unwrap_or(0));
        out.extend_from_slice(name);
        out.extend_from_slice(&self.module);
        out
    }

    /// Decodes a frame (the name must be a valid function name).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let (&len, rest) = bytes.split_first().ok_or(FrameError("empty"))?;
        let len = usize::from(len);
        let name = rest.get(..len).ok_or(FrameError("truncated name"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| FrameError("name not UTF-8"))?
            .to_string();
        if invoke_subject("x", &name).is_none() {
            return Err(FrameError("invalid function name"));
        }
        Ok(DeployFrame {
            name,
            module: rest[len..].to_vec(),
        })
    }
}

/// Enrollment messages (a tag byte, then the bytes of `psl-trust`'s own encoding).
pub mod enroll {
    /// Ask for a challenge.
    pub const CHALLENGE: u8 = 0;
    /// An enrollment request.
    pub const REQUEST: u8 = 1;
    /// Answer: what was asked.
    pub const OK: u8 = 0;
    /// Answer: refused (UTF-8 reason follows).
    pub const REFUSED: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_frames_round_trip_and_refuse_junk() {
        let call = Invocation {
            function: "counter".into(),
            sent_ms: 42,
            input: b"c".to_vec(),
        };
        assert_eq!(Invocation::decode(&call.encode()).unwrap(), call);
        assert!(Invocation::decode(&[]).is_err());
        assert!(Invocation::decode(&[200, b'a']).is_err());
        assert!(Invocation::decode(&[3, b'a', b'b']).is_err());
        let answer = encode_answer(InvokeStatus::Busy, b"later");
        assert_eq!(
            decode_answer(&answer).unwrap(),
            (InvokeStatus::Busy, &b"later"[..])
        );
        assert!(decode_answer(&[99]).is_err());
        let deploy = DeployFrame {
            name: "counter".into(),
            module: b"\0asm".to_vec(),
        };
        assert_eq!(DeployFrame::decode(&deploy.encode()).unwrap(), deploy);
        assert!(DeployFrame::decode(&[5, b'a']).is_err());
        assert!(
            DeployFrame::decode(&[1, b'A']).is_err(),
            "upper case is not a name"
        );
    }

    #[test]
    fn manager_messages_round_trip() {
        let request = ManagerRequest::Release {
            holder: [1; 16],
            name: b"acct/1".to_vec(),
            token: 9,
            watermark: vec![([2; 16], 5)],
            fenced: true,
        };
        let bytes = serde_json::to_vec(&request).unwrap();
        assert_eq!(
            serde_json::from_slice::<ManagerRequest>(&bytes).unwrap(),
            request
        );
    }
}
