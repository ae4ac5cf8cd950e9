//! Tartan's end-to-end tests (in `tests/`): the operator, the agents, the
//! chart and the uninstall hook against a real API server. The harness they
//! use is the `tartan-harness` crate; this crate holds only the tests.
