#![allow(dead_code)]
pub mod harness;
pub mod reference;
pub mod stability;
