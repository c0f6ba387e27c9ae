//! PID 1 of BigV's diskless nodes (docs/boot.md, "Init"). The pure logic
//! (command line, module order, DHCP state machine, restart backoff, the
//! agent's environment) lives in testable modules; `system`, `net` and
//! `supervise` wrap the system calls around it.

pub mod agent;
pub mod backoff;
pub mod cmdline;
pub mod dhcp;
pub mod disc;
pub mod fatal;
pub mod modules;
pub mod net;
pub mod supervise;
pub mod system;
