//! Fixtures shared by the agent's kernel tests (each test file does `mod common;`).

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod fixture;
