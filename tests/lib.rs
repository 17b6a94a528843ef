//! Workspace-level integration tests of kd-rs (see `tests/`); this library is empty.
