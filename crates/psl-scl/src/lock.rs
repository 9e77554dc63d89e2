//! Lock service (being written).
