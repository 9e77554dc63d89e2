//! Cluster-mode storage and transport over NATS (work in progress).
