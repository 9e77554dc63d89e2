//! PSL trust layer (in progress).
