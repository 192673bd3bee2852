//! `BpfError`: what can go wrong loading the eBPF objects, attaching their
//! programs and reading their maps, with aya's error for each operation
//! kept as the typed source.

use std::io;

/// A failed eBPF operation.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The object could not be loaded (parsed, relocated, maps created).
    #[error("loading {object}")]
    Load {
        /// The object, e.g. `uprobes.bpf.o`.
        object: &'static str,
        /// aya's reason.
        #[source]
        source: aya::EbpfError,
    },
    /// The object lacks a program or map this code expects.
    #[error("{object} has no {kind} named {name}")]
    Missing {
        /// The object.
        object: &'static str,
        /// `program` or `map`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// Loading or attaching a program failed.
    #[error("{what}")]
    Program {
        /// What was being done, e.g. `attaching malloc_enter to malloc in /usr/lib/libc.so.6`.
        what: String,
        /// aya's reason.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map could not be opened as the expected type.
    #[error("map {name}")]
    Map {
        /// The map.
        name: &'static str,
        /// aya's reason.
        #[source]
        source: aya::maps::MapError,
    },
}

impl BpfError {
    /// Whether the kernel refused for lack of privilege: an `EPERM` or
    /// `EACCES` anywhere in the chain of sources.
    pub fn is_permission(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            {
                return true;
            }
            source = e.source();
        }
        false
    }

    /// A [`BpfError::Program`].
    pub fn program(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        let what = what.into();
        move |source| BpfError::Program { what, source }
    }

    /// A [`BpfError::Map`].
    pub fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| BpfError::Map { name, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_is_found_by_errno_in_the_sources() {
        let refused = BpfError::Program {
            what: "loading malloc_enter".into(),
            source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: io::Error::from_raw_os_error(libc::EPERM),
            }),
        };
        assert!(refused.is_permission());
        let other = BpfError::Program {
            what: "attaching".into(),
            source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "perf_event_open",
                io_error: io::Error::from_raw_os_error(libc::ENOENT),
            }),
        };
        assert!(!other.is_permission());
    }
}
